//! Builds the XDP program (bpf/xdp_guard.c) with clang into OUT_DIR; the agent embeds it.
use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=bpf/xdp_guard.c");
    println!("cargo:rerun-if-env-changed=CLANG");
    let out = PathBuf::from(std::env::var_os("OUT_DIR").unwrap_or_default()).join("xdp_guard.o");
    let clang = std::env::var("CLANG").unwrap_or_else(|_| "clang".to_string());
    // Debian keeps asm/types.h under the multiarch directory.
    let multiarch = Command::new("gcc")
        .arg("-dumpmachine")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|| "x86_64-linux-gnu".to_string());
    let manifest = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_default();
    let status = Command::new(&clang)
        .args(["-O2", "-g", "-target", "bpf", "-Wall", "-Werror"])
        .arg(format!("-I/usr/include/{multiarch}"))
        .arg(format!("-fdebug-prefix-map={manifest}=."))
        .args(["-c", "bpf/xdp_guard.c", "-o"])
        .arg(&out)
        .status();
    match status {
        Ok(s) if s.success() => {}
        Ok(s) => {
            eprintln!("txgate-guard: `{clang} -target bpf` failed ({s}) building bpf/xdp_guard.c");
            std::process::exit(1);
        }
        Err(e) => {
            eprintln!("txgate-guard: cannot run {clang} ({e}): install clang and libbpf-dev (`make guard-tools` does)");
            std::process::exit(1);
        }
    }
    // DWARF is not needed at run time (BTF stays); llvm-strip is optional.
    let _ = Command::new("llvm-strip").arg("-g").arg(&out).status();
}
