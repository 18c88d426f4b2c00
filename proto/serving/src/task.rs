//! config.yaml's `task:`: what a model does, for the people who use it without a client
//! library. One schema for the worker (which checks it against the model and reports it)
//! and the scheduler (which checks it when a model is pushed to the catalog), so the web
//! page can turn a photo into the model's input tensor and name its outputs:
//!
//! ```yaml
//! task:
//!   kind: image-classification
//!   width: 224
//!   height: 224
//!   layout: NCHW          # or NHWC
//!   channels: RGB         # or BGR
//!   scale: 0.00392156862  # value = (pixel * scale - mean[c]) / std[c]
//!   mean: [0.485, 0.456, 0.406]
//!   std: [0.229, 0.224, 0.225]
//!   labels: labels.txt    # one label per line, beside config.yaml
//! ```

use std::path::{Component, Path};

use localml_proto::localml::v1::ModelTask;
use serde::Deserialize;

/// The largest side of the image a task may ask for.
pub const MAX_SIDE: u32 = 4096;
/// The most labels, and the largest labels file, a task may have (they travel in every
/// status report of the worker).
pub const MAX_LABELS: usize = 10_000;
pub const MAX_LABELS_BYTES: u64 = 256 * 1024;

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
pub enum Kind {
    #[serde(rename = "image-classification")]
    ImageClassification,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
pub enum Layout {
    #[default]
    #[serde(rename = "NCHW")]
    Nchw,
    #[serde(rename = "NHWC")]
    Nhwc,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
pub enum Channels {
    #[default]
    #[serde(rename = "RGB")]
    Rgb,
    #[serde(rename = "BGR")]
    Bgr,
}

fn default_scale() -> f32 {
    1.0 / 255.0
}

/// `task:` in config.yaml. Defaults: NCHW, RGB, scale 1/255, mean 0, std 1, no labels.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Task {
    pub kind: Kind,
    pub width: u32,
    pub height: u32,
    #[serde(default)]
    pub layout: Layout,
    #[serde(default)]
    pub channels: Channels,
    #[serde(default = "default_scale")]
    pub scale: f32,
    #[serde(default)]
    pub mean: Vec<f32>,
    #[serde(default)]
    pub std: Vec<f32>,
    /// A file beside config.yaml, one label per line.
    #[serde(default)]
    pub labels: Option<String>,
}

/// Only the `task:` key of a config.yaml (the scheduler leaves the others to the worker).
#[derive(Debug, Deserialize)]
struct TaskOnly {
    task: Option<Task>,
}

/// The `task:` of a config.yaml's text, checked; None when it has none.
pub fn from_config_yaml(text: &str) -> Result<Option<Task>, String> {
    if text.trim().is_empty() {
        return Ok(None);
    }
    let only: Option<TaskOnly> = serde_yaml::from_str(text).map_err(|e| e.to_string())?;
    let task = only.and_then(|o| o.task);
    if let Some(t) = &task {
        t.check()?;
    }
    Ok(task)
}

impl Task {
    /// The task's values make sense: a size, three or no means and deviations, no zero
    /// deviation, a labels file beside config.yaml.
    pub fn check(&self) -> Result<(), String> {
        for (what, side) in [("width", self.width), ("height", self.height)] {
            if side == 0 || side > MAX_SIDE {
                return Err(format!(
                    "task: {what} {side} is not between 1 and {MAX_SIDE}"
                ));
            }
        }
        if !self.scale.is_finite() || self.scale == 0.0 {
            return Err(format!(
                "task: scale {} must be a finite non-zero number",
                self.scale
            ));
        }
        for (what, values) in [("mean", &self.mean), ("std", &self.std)] {
            if !(values.is_empty() || values.len() == 3) {
                return Err(format!(
                    "task: {what} has {} values; give three (one per channel) or none",
                    values.len()
                ));
            }
            if values.iter().any(|v| !v.is_finite()) {
                return Err(format!("task: {what} must be finite numbers"));
            }
        }
        if self.std.contains(&0.0) {
            return Err("task: std must not be 0".into());
        }
        if let Some(labels) = &self.labels {
            let path = Path::new(labels);
            let plain =
                !labels.is_empty() && path.components().all(|c| matches!(c, Component::Normal(_)));
            if !plain {
                return Err(format!(
                    "task: labels '{labels}' must be a file name beside config.yaml"
                ));
            }
        }
        Ok(())
    }

    /// Reads the labels file from the first of `dirs` that has it (the version's
    /// directory, where pushed files go, then the model's, beside config.yaml).
    pub fn read_labels(&self, dirs: &[&Path]) -> Result<Vec<String>, String> {
        let Some(name) = &self.labels else {
            return Ok(Vec::new());
        };
        let path = dirs
            .iter()
            .map(|d| d.join(name))
            .find(|p| p.is_file())
            .unwrap_or_else(|| dirs.last().copied().unwrap_or(Path::new(".")).join(name));
        let size = std::fs::metadata(&path)
            .map_err(|e| format!("task: labels file {}: {e}", path.display()))?
            .len();
        if size > MAX_LABELS_BYTES {
            return Err(format!(
                "task: labels file {} has {size} bytes, over the limit of {MAX_LABELS_BYTES}",
                path.display()
            ));
        }
        let text = std::fs::read_to_string(&path)
            .map_err(|e| format!("task: labels file {}: {e}", path.display()))?;
        let labels: Vec<String> = text
            .trim_end()
            .lines()
            .map(|l| l.trim().to_string())
            .collect();
        if labels.len() > MAX_LABELS {
            return Err(format!(
                "task: labels file {} has {} labels, over the limit of {MAX_LABELS}",
                path.display(),
                labels.len()
            ));
        }
        Ok(labels)
    }

    /// The image input this task fills must be a float tensor of four dimensions (batch
    /// first) whose channel, height and width fit the task, where the model fixes them.
    pub fn check_input(&self, datatype: &str, shape: &[i64]) -> Result<(), String> {
        if !matches!(datatype, "FP32" | "FP16" | "FP64") {
            return Err(format!(
                "task: the model's input is {datatype}; an image task needs FP32, FP16 or FP64"
            ));
        }
        let want: [i64; 3] = match self.layout {
            Layout::Nchw => [3, i64::from(self.height), i64::from(self.width)],
            Layout::Nhwc => [i64::from(self.height), i64::from(self.width), 3],
        };
        let fits = shape.len() == 4
            && shape[1..]
                .iter()
                .zip(want)
                .all(|(&have, want)| have < 0 || have == want);
        if !fits {
            return Err(format!(
                "task: the model's input has shape {shape:?}; the task ({}, {}x{}) needs [batch, {}, {}, {}]",
                match self.layout {
                    Layout::Nchw => "NCHW",
                    Layout::Nhwc => "NHWC",
                },
                self.width,
                self.height,
                want[0],
                want[1],
                want[2]
            ));
        }
        Ok(())
    }

    /// As the worker reports it.
    pub fn report(&self, labels: Vec<String>) -> ModelTask {
        ModelTask {
            kind: "image-classification".into(),
            width: self.width,
            height: self.height,
            layout: match self.layout {
                Layout::Nchw => "NCHW",
                Layout::Nhwc => "NHWC",
            }
            .into(),
            channels: match self.channels {
                Channels::Rgb => "RGB",
                Channels::Bgr => "BGR",
            }
            .into(),
            scale: self.scale,
            mean: if self.mean.is_empty() {
                vec![0.0; 3]
            } else {
                self.mean.clone()
            },
            std: if self.std.is_empty() {
                vec![1.0; 3]
            } else {
                self.std.clone()
            },
            labels,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "max_batch_size: 8\ntask:\n  kind: image-classification\n  width: 16\n  height: 12\n  layout: NHWC\n  channels: BGR\n  mean: [0.5, 0.5, 0.5]\n  std: [0.25, 0.25, 0.25]\n  labels: labels.txt\n";

    #[test]
    fn a_task_parses_with_defaults() {
        let t = from_config_yaml(GOOD).expect("valid").expect("a task");
        assert_eq!((t.width, t.height), (16, 12));
        assert_eq!((t.layout, t.channels), (Layout::Nhwc, Channels::Bgr));
        assert!((t.scale - 1.0 / 255.0).abs() < 1e-9);
        let r = t.report(vec!["a".into()]);
        assert_eq!((r.layout.as_str(), r.channels.as_str()), ("NHWC", "BGR"));
        let bare = from_config_yaml("task: {kind: image-classification, width: 4, height: 4}")
            .expect("valid")
            .expect("a task");
        let r = bare.report(Vec::new());
        assert_eq!(
            (r.layout.as_str(), r.mean.clone(), r.std.clone()),
            ("NCHW", vec![0.0; 3], vec![1.0; 3])
        );
        assert_eq!(from_config_yaml("max_batch_size: 4").expect("valid"), None);
        assert_eq!(from_config_yaml("").expect("valid"), None);
    }

    #[test]
    fn bad_tasks_are_refused_naming_the_problem() {
        let base = "task: {kind: image-classification, width: 4, height: 4";
        for (extra, says) in [
            (", std: [1, 0, 1]}", "std must not be 0"),
            (", mean: [1, 2]}", "mean has 2 values"),
            (", labels: ../x.txt}", "must be a file name"),
            (", labels: /etc/passwd}", "must be a file name"),
            (", scale: 0}", "scale 0"),
            (", colour: red}", "unknown field"),
        ] {
            let err = from_config_yaml(&format!("{base}{extra}")).expect_err(extra);
            assert!(err.contains(says), "{extra}: {err}");
        }
        let err = from_config_yaml("task: {kind: image-classification, width: 0, height: 4}")
            .expect_err("zero width");
        assert!(err.contains("width 0"), "{err}");
        let err = from_config_yaml("task: {kind: detection, width: 4, height: 4}")
            .expect_err("unknown kind");
        assert!(err.contains("unknown variant"), "{err}");
    }

    #[test]
    fn the_input_must_fit_the_task() {
        let t = from_config_yaml(GOOD).expect("valid").expect("a task");
        t.check_input("FP32", &[-1, 12, 16, 3]).expect("NHWC 12x16");
        t.check_input("FP32", &[-1, -1, -1, 3])
            .expect("dynamic sides");
        let err = t.check_input("FP32", &[-1, 3, 12, 16]).expect_err("NCHW");
        assert!(err.contains("[batch, 12, 16, 3]"), "{err}");
        assert!(t.check_input("INT64", &[-1, 12, 16, 3]).is_err());
        assert!(t.check_input("FP32", &[12, 16, 3]).is_err());
    }

    #[test]
    fn labels_are_read_beside_the_config() {
        let dir = std::env::temp_dir().join(format!("localml-task-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        std::fs::write(dir.join("labels.txt"), "cat\ndog \n\n").expect("write");
        let t = from_config_yaml(GOOD).expect("valid").expect("a task");
        let elsewhere = std::env::temp_dir();
        assert_eq!(
            t.read_labels(&[&elsewhere, &dir]).expect("read"),
            ["cat", "dog"]
        );
        std::fs::write(dir.join("labels.txt"), "x\n".repeat(MAX_LABELS + 1)).expect("write");
        let err = t.read_labels(&[&dir]).expect_err("too many");
        assert!(err.contains("over the limit"), "{err}");
        std::fs::remove_dir_all(&dir).ok();
        let err = t.read_labels(&[&dir]).expect_err("missing");
        assert!(err.contains("labels file"), "{err}");
    }
}
