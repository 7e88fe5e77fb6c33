# The app as a Nix package: `nix build` (flake.nix at the top of the repository) or
# `pkgs.callPackage ./nix/package.nix { }`. Tests that need no root and no sshd run offscreen.
{
  lib,
  stdenv,
  python3Packages,
  qt6,
  copyDesktopItems,
  makeDesktopItem,
  openssh,
}:

python3Packages.buildPythonApplication rec {
  pname = "nixos-kexec-wizard";
  version = "0.1.0";
  pyproject = true;

  src = lib.cleanSourceWith {
    src = ../.;
    filter = path: type: !(lib.hasInfix "/.venv" path || lib.hasInfix "/dist" path || lib.hasInfix "/build" path);
  };

  build-system = [ python3Packages.setuptools ];

  dependencies = with python3Packages; [
    pyside6
    paramiko
    requests
    keyring
    platformdirs
  ];
  # nixpkgs ships PySide6 whole, not the PySide6-Essentials wheel that pyproject names.
  pythonRemoveDeps = [ "PySide6-Essentials" ];

  nativeBuildInputs = [
    qt6.wrapQtAppsHook
    copyDesktopItems
  ];
  buildInputs = [
    qt6.qtbase
    qt6.qtsvg
  ] ++ lib.optionals stdenv.hostPlatform.isLinux [ qt6.qtwayland ];

  # One wrapper: Python's, with Qt's plugin paths added, and `ssh` on PATH for the
  # "open a terminal" button.
  dontWrapQtApps = true;
  preFixup = ''
    makeWrapperArgs+=("''${qtWrapperArgs[@]}" --prefix PATH : ${lib.makeBinPath [ openssh ]})
  '';

  desktopItems = [
    (makeDesktopItem {
      name = "org.nixos_kexec_wizard.NixosKexecWizard";
      desktopName = "NixOS Kexec Wizard";
      genericName = "NixOS Installer Launcher";
      comment = "Boot the NixOS installer into RAM on a rented Linux server, over SSH";
      exec = "nixos-kexec-wizard";
      icon = "org.nixos_kexec_wizard.NixosKexecWizard";
      categories = [ "Network" "RemoteAccess" ];
      keywords = [ "NixOS" "kexec" "installer" "server" "SSH" "VPS" ];
      startupWMClass = "nixos-kexec-wizard";
    })
  ];

  postInstall = ''
    cp -r resources/icons $out/share/icons
    install -Dm644 resources/org.nixos_kexec_wizard.NixosKexecWizard.metainfo.xml -t $out/share/metainfo
  '';

  nativeCheckInputs = with python3Packages; [
    pytestCheckHook
    pytest-qt
    pytest-timeout
    hypothesis
  ];
  preCheck = ''
    export HOME=$TMPDIR QT_QPA_PLATFORM=offscreen
  '';
  # The sshd and VM suites need root, local users and QEMU: they run in the repository's CI.
  pytestFlagsArray = [ "-m" "'not sshd and not vm'" ];

  meta = {
    description = "Boot the NixOS installer into RAM on any Linux server over SSH, safely";
    license = lib.licenses.mit;
    mainProgram = "nixos-kexec-wizard";
    platforms = lib.platforms.linux ++ lib.platforms.darwin;
  };
}
