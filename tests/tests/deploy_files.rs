//! The files for running localml outside `localml up`: Dockerfiles (pinned, multi-stage,
//! non-root, the ONNX Runtime version the worker expects) and the systemd unit for bare
//! worker PCs (valid for systemd, every flag known to the worker).

use std::process::Command;

use localml_tests::{bin, repo_root, TempDir};

fn read(path: &str) -> String {
    std::fs::read_to_string(repo_root().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

#[test]
fn dockerfiles_are_pinned_multi_stage_and_non_root() {
    use localml_worker::runtime::Flavor;
    for (file, package) in [
        ("deploy/docker/scheduler.Dockerfile", None),
        (
            "deploy/docker/worker.Dockerfile",
            Some(("onnxruntime", Flavor::Cpu)),
        ),
        (
            "deploy/docker/worker-gpu.Dockerfile",
            Some(("onnxruntime-gpu", Flavor::Gpu)),
        ),
    ] {
        let text = read(file);
        let froms: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("FROM "))
            .map(|l| l.split_whitespace().next().unwrap_or(""))
            .collect();
        assert!(froms.len() >= 2, "{file}: multi-stage: {froms:?}");
        for image in &froms {
            let tag = image.rsplit_once(':').map(|(_, t)| t).unwrap_or("");
            assert!(
                tag.chars().any(|c| c.is_ascii_digit()) && tag != "latest",
                "{file}: base image {image} is not pinned to a version"
            );
        }
        assert!(
            text.contains("cargo build --release --locked"),
            "{file}: locked build"
        );
        assert!(
            text.contains("USER 10001:10001"),
            "{file}: runs as non-root"
        );
        if let Some((package, flavor)) = package {
            let ort = flavor.version();
            assert!(
                text.contains(&format!("{package}=={ort}")),
                "{file}: ONNX Runtime {ort} from {package}, as `localml runtime install` fetches"
            );
            assert!(text.contains(&format!(
                "ORT_DYLIB_PATH=/opt/onnxruntime/lib/{}",
                flavor.library_file()
            )));
        }
    }
    // The chart's default images are these, at the workspace version.
    let version = env!("CARGO_PKG_VERSION");
    let values = read("helm/localml/values.yaml");
    assert_eq!(
        values.matches(&format!("tag: \"{version}\"")).count(),
        3,
        "{values}"
    );
    assert!(read("helm/localml/Chart.yaml").contains(&format!("appVersion: \"{version}\"")));
}

#[test]
fn the_systemd_unit_is_valid_and_uses_real_worker_flags() {
    let unit = read("deploy/systemd/localml-worker.service");
    let env = read("deploy/systemd/localml-worker.env");
    // Every variable the unit uses is set in the environment file.
    for var in unit.split("${").skip(1).filter_map(|s| s.split('}').next()) {
        assert!(
            env.contains(&format!("\n{var}=")),
            "{var} missing from localml-worker.env"
        );
    }
    // Every flag in ExecStart is one the worker knows.
    let help = Command::new(bin("localml-worker"))
        .arg("--help")
        .output()
        .expect("localml-worker --help");
    let help = String::from_utf8_lossy(&help.stdout);
    let exec: String = unit
        .lines()
        .skip_while(|l| !l.starts_with("ExecStart="))
        .take_while(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .collect::<Vec<_>>()
        .join(" ");
    let flags: Vec<&str> = exec
        .split_whitespace()
        .filter(|w| w.starts_with("--"))
        .collect();
    assert!(flags.len() >= 6, "{exec}");
    for flag in flags {
        assert!(help.contains(flag), "{flag} is not a localml-worker flag");
    }
    // systemd itself accepts the unit (with the binary path pointed at the real build).
    let dir = TempDir::new("systemd");
    let path = dir.path().join("localml-worker.service");
    let worker = bin("localml-worker");
    std::fs::write(
        &path,
        unit.replace("/usr/local/bin/localml-worker", &worker.to_string_lossy()),
    )
    .expect("write unit");
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .expect("systemd-analyze (Debian package systemd)");
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && !report.contains("localml-worker.service:"),
        "{report}"
    );
}
