"""The QEMU test bed: a real kernel replaced by kexec under the app's control."""
