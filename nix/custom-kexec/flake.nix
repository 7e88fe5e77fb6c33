# A kexec installer tarball of your own, with your SSH keys baked in, built with the
# nixos-images module. Put your public keys in authorized-keys.nix, then:
#   nix build ./nix/custom-kexec            (x86_64; for ARM: .#packages.aarch64-linux.default)
# and choose result/nixos-kexec-installer-noninteractive-x86_64-linux.tar.gz as the wizard's
# "local file" (or: nixos-kexec-wizard install --image result/... root@server).
{
  description = "A NixOS kexec installer with your SSH keys baked in";

  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-unstable";
  inputs.nixos-images.url = "github:nix-community/nixos-images";

  outputs =
    { nixpkgs, nixos-images, ... }:
    let
      installer =
        system:
        (nixpkgs.lib.nixosSystem {
          inherit system;
          modules = [
            nixos-images.nixosModules.kexec-installer
            nixos-images.nixosModules.noninteractive
            {
              system.kexec-installer.name = "nixos-kexec-installer-noninteractive";
              # `run` also carries the server's own keys; these work even when it has none.
              users.users.root.openssh.authorizedKeys.keys = import ./authorized-keys.nix;
            }
          ];
        }).config.system.build.kexecInstallerTarball;
    in
    {
      packages = nixpkgs.lib.genAttrs [ "x86_64-linux" "aarch64-linux" ] (system: {
        default = installer system;
      });
    };
}
