"""NixOS Kexec Wizard: boot the NixOS installer into RAM on a Linux server over SSH."""

__version__ = "0.1.0"
APP_NAME = "nixos-kexec-wizard"
APP_ID = "org.nixos_kexec_wizard.NixosKexecWizard"
