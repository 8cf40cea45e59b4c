//! Rebuild the eBPF object when bpf-linker changes (it is our linker, so a
//! new one can change the object), as the aya-template does.
use which::which;

fn main() {
    if let Ok(bpf_linker) = which("bpf-linker") {
        println!("cargo:rerun-if-changed={}", bpf_linker.display());
    }
}
