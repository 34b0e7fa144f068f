//! `crdgen`: prints every CustomResourceDefinition of the operator, generated
//! from the Rust types, as one multi-document YAML stream.
//!
//! ```text
//! cargo run --bin crdgen | kubectl apply -f -      # install or upgrade the CRDs
//! cargo run --bin crdgen -- --dir config/crd        # refresh the committed copies
//! ```

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use mcm_provider_aws::api::crd;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.as_slice() {
        [] => {
            // A closed pipe (`crdgen | head`) is not an error worth a panic.
            match std::io::stdout().write_all(crd::render_yaml().as_bytes()) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("crdgen: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        [flag, dir] if flag == "--dir" => match write_dir(&PathBuf::from(dir)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("crdgen: writing {dir}: {e}");
                ExitCode::FAILURE
            }
        },
        _ => {
            eprintln!(
                "usage: crdgen            print all CRDs (multi-document YAML) on stdout\n       \
                 crdgen --dir DIR  write one <group>_<plural>.yaml per CRD into DIR, \
                 removing stale ones"
            );
            ExitCode::from(2)
        }
    }
}

fn write_dir(dir: &std::path::Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let crds = crd::all();
    let keep: Vec<String> = crds.iter().map(crd::file_name).collect();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        if name.ends_with(".yaml") && !keep.iter().any(|k| k == name) {
            std::fs::remove_file(&path)?;
        }
    }
    for c in &crds {
        std::fs::write(dir.join(crd::file_name(c)), crd::to_yaml(c))?;
    }
    Ok(())
}
