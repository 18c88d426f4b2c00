//! The model repository on disk, in Triton's layout:
//! `<repo>/<model>/<version>/model.onnx` with an optional `<repo>/<model>/config.yaml`.

use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Which versions of a model to load.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum VersionPolicy {
    /// Only the highest version number (Triton's default).
    #[default]
    Latest,
    /// Every version directory.
    All,
}

/// An override of one input or output declared by the model.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TensorOverride {
    pub name: String,
    /// Dimensions without the batch dimension when `max_batch_size > 0`; they may fix
    /// dimensions the model leaves dynamic.
    pub dims: Vec<i64>,
}

/// `<repo>/<model>/config.yaml`. Every key is optional.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// Largest batch; 0 means the model has no batch dimension. Default: 8 when every input
    /// and output has a dynamic first dimension, else 0.
    pub max_batch_size: Option<u32>,
    /// ONNX Runtime sessions per version, i.e. requests that run at once. Default 1.
    pub instances: Option<u32>,
    /// Preferred execution providers in order, e.g. `[cuda, cpu]`. Known names: cuda,
    /// tensorrt, rocm, openvino, cpu. Default: every GPU provider the library has, then cpu.
    pub execution_providers: Option<Vec<String>>,
    pub version_policy: Option<VersionPolicy>,
    /// Requests that may wait for a session before new ones are refused. Default 64.
    pub max_queue: Option<u32>,
    pub inputs: Option<Vec<TensorOverride>>,
    pub outputs: Option<Vec<TensorOverride>>,
    /// Join concurrent requests into one run, as Triton's `dynamic_batching`.
    pub dynamic_batching: Option<DynamicBatching>,
    /// What the model does (localml_serving::task): how the web page turns a photo into
    /// its input, and its labels.
    pub task: Option<localml_serving::task::Task>,
}

/// `dynamic_batching` in config.yaml, with Triton's names. Needs `max_batch_size > 0`.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DynamicBatching {
    /// How long the oldest request may wait for others to join its batch, in
    /// microseconds (default 0: only requests already waiting join; at most 1 s).
    pub max_queue_delay_microseconds: Option<u64>,
    /// Batch sizes sent as soon as they are reached (each at most `max_batch_size`).
    pub preferred_batch_size: Option<Vec<u32>>,
}

impl DynamicBatching {
    /// The checked policy for a model whose largest batch is `max_batch_size`.
    pub fn policy(&self, max_batch_size: u32) -> Result<crate::model::BatchPolicy, String> {
        if max_batch_size == 0 {
            return Err("needs a batch dimension (max_batch_size > 0)".into());
        }
        let delay =
            std::time::Duration::from_micros(self.max_queue_delay_microseconds.unwrap_or(0));
        if delay > crate::model::MAX_QUEUE_DELAY {
            return Err(format!(
                "max_queue_delay_microseconds {} is over the limit of {}",
                delay.as_micros(),
                crate::model::MAX_QUEUE_DELAY.as_micros()
            ));
        }
        let preferred = self.preferred_batch_size.clone().unwrap_or_default();
        if let Some(bad) = preferred.iter().find(|&&n| n == 0 || n > max_batch_size) {
            return Err(format!(
                "preferred_batch_size {bad} is not between 1 and max_batch_size {max_batch_size}"
            ));
        }
        Ok(crate::model::BatchPolicy {
            max_queue_delay: delay,
            preferred: preferred.into_iter().map(|n| n as usize).collect(),
        })
    }
}

/// A model version found on disk.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelSource {
    pub name: String,
    pub version: u64,
    pub path: PathBuf,
    pub config: ModelConfig,
    /// The catalog variant (fp32, fp16, int8); empty for the worker's own repository.
    pub variant: String,
}

/// Why the model repository cannot be scanned.
#[derive(Debug, thiserror::Error)]
pub enum RepositoryError {
    /// The repository, or a model directory in it, cannot be listed.
    #[error("model repository {0} is not a readable directory: {1}")]
    Unreadable(PathBuf, std::io::Error),
    /// A model's `config.yaml` cannot be read or parsed (serde's message names the field).
    #[error("{path}: {reason}")]
    BadConfig { path: PathBuf, reason: String },
}

/// Scans the repository. A model whose config cannot be parsed is an error (a typo in a
/// config must not silently change behaviour); directories without versions are skipped.
pub fn scan(repo: &Path) -> Result<Vec<ModelSource>, RepositoryError> {
    let entries =
        std::fs::read_dir(repo).map_err(|e| RepositoryError::Unreadable(repo.to_path_buf(), e))?;
    let mut model_dirs: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir())
        .collect();
    model_dirs.sort();
    let mut found = Vec::new();
    for dir in model_dirs {
        let Some(name) = dir.file_name().and_then(|n| n.to_str()).map(str::to_string) else {
            continue;
        };
        let config = read_config(&dir.join("config.yaml"))?;
        let mut versions: Vec<(u64, PathBuf)> = std::fs::read_dir(&dir)
            .map_err(|e| RepositoryError::Unreadable(dir.clone(), e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter_map(|p| {
                let version = p.file_name()?.to_str()?.parse::<u64>().ok()?;
                let model = p.join("model.onnx");
                model.is_file().then_some((version, model))
            })
            .collect();
        versions.sort();
        if config.version_policy.unwrap_or_default() == VersionPolicy::Latest {
            versions = versions.split_off(versions.len().saturating_sub(1));
        }
        for (version, path) in versions {
            found.push(ModelSource {
                name: name.clone(),
                version,
                path,
                config: config.clone(),
                variant: String::new(),
            });
        }
    }
    Ok(found)
}

/// A model's config.yaml (missing or empty: the defaults).
pub fn read_config(path: &Path) -> Result<ModelConfig, RepositoryError> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(ModelConfig::default()),
        Err(e) => {
            return Err(RepositoryError::BadConfig {
                path: path.to_path_buf(),
                reason: e.to_string(),
            })
        }
    };
    if text
        .trim()
        .lines()
        .all(|l| l.trim().is_empty() || l.trim_start().starts_with('#'))
    {
        return Ok(ModelConfig::default());
    }
    let bad = |reason: String| RepositoryError::BadConfig {
        path: path.to_path_buf(),
        reason,
    };
    let config: ModelConfig = serde_yaml::from_str(&text).map_err(|e| bad(e.to_string()))?;
    if let Some(task) = &config.task {
        task.check().map_err(bad)?;
    }
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touch(path: &Path) {
        std::fs::create_dir_all(path.parent().expect("has parent")).expect("mkdir");
        std::fs::write(path, b"onnx").expect("write");
    }

    fn temp_repo(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("localml-repo-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn scans_latest_by_default_and_all_on_request() {
        let repo = temp_repo("policy");
        touch(&repo.join("a/1/model.onnx"));
        touch(&repo.join("a/3/model.onnx"));
        touch(&repo.join("a/2/other.bin"));
        touch(&repo.join("b/1/model.onnx"));
        touch(&repo.join("b/10/model.onnx"));
        std::fs::write(
            repo.join("b/config.yaml"),
            "version_policy: all\ninstances: 2\n",
        )
        .expect("write");
        touch(&repo.join("empty/notes/model.onnx"));
        let found: Vec<(String, u64)> = scan(&repo)
            .expect("scan")
            .into_iter()
            .map(|m| (m.name, m.version))
            .collect();
        assert_eq!(
            found,
            vec![
                ("a".to_string(), 3),
                ("b".to_string(), 1),
                ("b".to_string(), 10)
            ]
        );
        std::fs::remove_dir_all(&repo).ok();
    }

    #[test]
    fn dynamic_batching_is_checked_against_the_batch_size() {
        let parse = |yaml: &str| -> DynamicBatching {
            let c: ModelConfig = serde_yaml::from_str(yaml).expect("parse");
            c.dynamic_batching.expect("dynamic_batching")
        };
        let ok = parse(
            "dynamic_batching: {max_queue_delay_microseconds: 500, preferred_batch_size: [4, 8]}",
        )
        .policy(8)
        .expect("valid");
        assert_eq!(ok.max_queue_delay, std::time::Duration::from_micros(500));
        assert_eq!(ok.preferred, vec![4, 8]);
        let cases = [
            ("dynamic_batching: {}", 0, "needs a batch dimension"),
            (
                "dynamic_batching: {preferred_batch_size: [16]}",
                8,
                "preferred_batch_size 16 is not between 1 and max_batch_size 8",
            ),
            (
                "dynamic_batching: {max_queue_delay_microseconds: 5000000}",
                8,
                "max_queue_delay_microseconds 5000000 is over the limit of 1000000",
            ),
        ];
        for (yaml, max, message) in cases {
            let err = parse(yaml).policy(max).expect_err(yaml);
            assert!(err.contains(message), "{yaml}: {err}");
        }
        let unknown = serde_yaml::from_str::<ModelConfig>("dynamic_batching: {max_delay: 1}")
            .expect_err("unknown key");
        assert!(unknown.to_string().contains("max_delay"), "{unknown}");
    }

    #[test]
    fn config_errors_name_the_file_and_field() {
        let repo = temp_repo("badcfg");
        touch(&repo.join("m/1/model.onnx"));
        std::fs::write(
            repo.join("m/config.yaml"),
            "max_batch_size: 4\ninstanecs: 2\n",
        )
        .expect("write");
        let err = scan(&repo).expect_err("unknown field rejected").to_string();
        assert!(err.contains("m/config.yaml"), "{err}");
        assert!(err.contains("instanecs"), "{err}");
        std::fs::remove_dir_all(&repo).ok();
    }

    #[test]
    fn missing_repository_is_a_clear_error() {
        let err = scan(Path::new("/nonexistent/localml-models"))
            .expect_err("missing")
            .to_string();
        assert!(err.contains("/nonexistent/localml-models"), "{err}");
    }
}
