//! Compiles the programs-mode eBPF hooks (bpf/*.bpf.c) with clang into OUT_DIR, where
//! src/programs/hooks.rs embeds them. clang and libbpf-dev (bpf_helpers.h) are build
//! dependencies: scripts/deps and .ci/run install them.
use std::path::PathBuf;
use std::process::Command;

fn main() {
    let src = "bpf/sock_addr.bpf.c";
    println!("cargo:rerun-if-changed={src}");
    println!("cargo:rerun-if-env-changed=CLANG");
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR")).join("sock_addr.bpf.o");
    let clang = std::env::var("CLANG").unwrap_or_else(|_| "clang".into());
    // <linux/bpf.h> includes <asm/types.h>, which Debian keeps under the multiarch directory.
    let arch = std::env::var("CARGO_CFG_TARGET_ARCH").expect("cargo sets CARGO_CFG_TARGET_ARCH");
    let multiarch = format!("/usr/include/{arch}-linux-gnu");
    let status = Command::new(&clang)
        .args(["-O2", "-g", "-target", "bpf", "-Wall", "-Werror", "-I", &multiarch, "-c", src, "-o"])
        .arg(&out)
        .status()
        .unwrap_or_else(|e| panic!("cannot run {clang} to build {src} (programs mode's eBPF hooks): {e}; install clang and libbpf-dev (scripts/deps)"));
    assert!(status.success(), "{clang} failed to build {src} ({status}); it needs libbpf-dev's <bpf/bpf_helpers.h> (scripts/deps)");
}
