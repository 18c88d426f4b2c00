//! The crate graph is the design's layering (docs/architecture.md): the scheduling
//! framework does no I/O, so it must not depend on an async runtime, gRPC or a store,
//! and the simulator runs the framework alone. Checked on the real dependency graph
//! with `cargo tree`, so adding such a dependency fails here.

use std::process::Command;

/// `cargo tree` on the workspace with `args`; its output.
fn cargo_tree(args: &[&str]) -> String {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let manifest = concat!(env!("CARGO_MANIFEST_DIR"), "/../Cargo.toml");
    let output = Command::new(cargo)
        .args(["tree", "--manifest-path", manifest, "--offline"])
        .args(args)
        .output()
        .expect("run cargo tree");
    assert!(
        output.status.success(),
        "cargo tree {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The crates that `package` depends on for normal builds, by name.
fn normal_dependencies(package: &str) -> Vec<String> {
    let mut names: Vec<String> = cargo_tree(&["-p", package, "-e", "normal", "--prefix", "none"])
        .lines()
        .filter_map(|line| line.split_whitespace().next().map(str::to_string))
        .collect();
    names.sort();
    names.dedup();
    names
}

const IO_CRATES: [&str; 6] = ["tokio", "tonic", "redb", "etcd-client", "hyper", "axum"];

#[test]
fn the_framework_does_no_io() {
    let deps = normal_dependencies("localml-framework");
    assert!(deps.iter().any(|d| d == "serde_yaml"), "{deps:?}");
    for forbidden in IO_CRATES {
        assert!(
            !deps.iter().any(|d| d == forbidden),
            "localml-framework depends on {forbidden}: {deps:?}"
        );
    }
}

#[test]
fn the_simulator_runs_the_framework_alone() {
    let deps = normal_dependencies("localml-sim");
    let ours: Vec<&String> = deps.iter().filter(|d| d.starts_with("localml-")).collect();
    assert_eq!(ours, ["localml-framework", "localml-sim"], "{deps:?}");
    for forbidden in IO_CRATES {
        assert!(
            !deps.iter().any(|d| d == forbidden),
            "localml-sim depends on {forbidden}: {deps:?}"
        );
    }
}

#[test]
fn release_builds_do_not_carry_the_store_conformance_suite() {
    // The suite is a feature that only dev-dependencies enable.
    let text = cargo_tree(&[
        "-p",
        "localml-cli",
        "-e",
        "normal,features",
        "-i",
        "localml-store",
    ]);
    assert!(text.contains("localml-store"), "{text}");
    assert!(!text.contains("conformance"), "{text}");
}
