//! `localml models push|list|show|delete`: the cluster's model catalog (docs/models.md).
//!
//! A push hashes each file (sha256, read in pieces), asks the scheduler what it already
//! holds, uploads only the missing bytes (an interrupted push resumes where it stopped;
//! a file already there is not sent again), then adds the version.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use indicatif::{ProgressBar, ProgressStyle};
use localml_proto::localml::v1::catalog_client::CatalogClient;
use localml_proto::localml::v1::*;

use crate::client::{self, Connection};

/// Bytes per uploaded chunk (well under the scheduler's message limit).
const CHUNK_BYTES: usize = 1 << 20;

pub async fn connect(server: &str) -> anyhow::Result<CatalogClient<Connection>> {
    let channel = client::connect(server, Duration::from_secs(5)).await?;
    Ok(CatalogClient::new(channel)
        .max_decoding_message_size(client::MAX_MESSAGE_BYTES)
        .max_encoding_message_size(client::MAX_MESSAGE_BYTES))
}

fn failed(s: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{:?}: {}", s.code(), s.message())
}

/// What a push sends: the version directory's files and the model's config.yaml.
#[derive(Debug, PartialEq)]
pub struct Local {
    pub name: String,
    /// (path inside the version, file on disk)
    pub files: Vec<(String, PathBuf)>,
    pub config_yaml: String,
}

/// Reads PATH as `localml models push` takes it: one .onnx file; a version directory
/// (holding model.onnx); or a model directory in Triton's layout (numbered version
/// directories and config.yaml), of which the highest version is pushed.
pub fn local_model(path: &Path, name: Option<&str>) -> anyhow::Result<Local> {
    let meta = std::fs::metadata(path).with_context(|| format!("{}", path.display()))?;
    let dir_name = |p: &Path| {
        std::fs::canonicalize(p)
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
    };
    let (version_dir, model_dir, default_name) = if meta.is_file() {
        let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned());
        let local = Local {
            name: name.map(str::to_string).or(stem).unwrap_or_default(),
            files: vec![("model.onnx".into(), path.to_path_buf())],
            config_yaml: String::new(),
        };
        return Ok(local);
    } else if path.join("model.onnx").is_file() {
        let numbered = dir_name(path).is_some_and(|n| n.parse::<u64>().is_ok());
        if numbered {
            let parent = path.join("..");
            let name = dir_name(&parent);
            (path.to_path_buf(), Some(parent), name)
        } else {
            (path.to_path_buf(), Some(path.to_path_buf()), dir_name(path))
        }
    } else {
        let mut versions: Vec<u64> = std::fs::read_dir(path)
            .with_context(|| format!("{}", path.display()))?
            .filter_map(|e| e.ok())
            .filter(|e| e.path().join("model.onnx").is_file())
            .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse().ok()))
            .collect();
        versions.sort_unstable();
        let Some(highest) = versions.last() else {
            bail!(
                "{}: no model.onnx, and no version directory (1/, 2/, ...) holding one",
                path.display()
            );
        };
        (
            path.join(highest.to_string()),
            Some(path.to_path_buf()),
            dir_name(path),
        )
    };
    let config_yaml = match model_dir.map(|d| d.join("config.yaml")) {
        Some(file) if file.is_file() => {
            std::fs::read_to_string(&file).with_context(|| format!("{}", file.display()))?
        }
        _ => String::new(),
    };
    let mut files = Vec::new();
    collect(&version_dir, "", &mut files)?;
    files.sort();
    Ok(Local {
        name: name
            .map(str::to_string)
            .or(default_name)
            .unwrap_or_default(),
        files,
        config_yaml,
    })
}

fn collect(dir: &Path, prefix: &str, out: &mut Vec<(String, PathBuf)>) -> anyhow::Result<()> {
    for entry in std::fs::read_dir(dir).with_context(|| format!("{}", dir.display()))? {
        let entry = entry?;
        let Some(name) = entry.file_name().to_str().map(str::to_string) else {
            bail!("{}: a file name that is not UTF-8", entry.path().display());
        };
        let path = entry.path();
        let inside = format!("{prefix}{name}");
        if path.is_dir() {
            collect(&path, &format!("{inside}/"), out)?;
        } else if path.is_file() {
            out.push((inside, path));
        }
    }
    Ok(())
}

/// What a push did.
#[derive(Debug)]
pub struct Pushed {
    pub model: CatalogModel,
    pub total_bytes: u64,
    pub sent_bytes: u64,
    /// Files the scheduler already held whole.
    pub already_there: usize,
}

pub async fn push(
    server: &str,
    path: &Path,
    name: Option<&str>,
    version: Option<u64>,
    variant: &str,
) -> anyhow::Result<Pushed> {
    let local = local_model(path, name)?;
    let mut catalog = connect(server).await?;
    let sent = upload_files(&mut catalog, &local.files).await?;
    let model = catalog
        .put_model(CatalogModel {
            name: local.name.clone(),
            version: version.map(|v| v.to_string()).unwrap_or_default(),
            variant: variant.to_string(),
            files: sent.files,
            config_yaml: local.config_yaml,
            ..Default::default()
        })
        .await
        .map_err(failed)?
        .into_inner();
    Ok(Pushed {
        model,
        total_bytes: sent.total_bytes,
        sent_bytes: sent.sent_bytes,
        already_there: sent.already_there,
    })
}

/// What [`upload_files`] did.
pub struct Uploaded {
    pub files: Vec<CatalogFile>,
    pub total_bytes: u64,
    pub sent_bytes: u64,
    /// Files the scheduler already held whole.
    pub already_there: usize,
}

/// Hashes `files` ((name, file on disk)) and uploads what the scheduler lacks, resuming
/// interrupted uploads, with a progress bar on a terminal.
pub async fn upload_files(
    catalog: &mut CatalogClient<Connection>,
    local: &[(String, PathBuf)],
) -> anyhow::Result<Uploaded> {
    // Hash first (the name of each blob), on a blocking thread.
    let paths: Vec<PathBuf> = local.iter().map(|(_, p)| p.clone()).collect();
    let hashed = tokio::task::spawn_blocking(move || {
        paths
            .iter()
            .map(|p| {
                let size = std::fs::metadata(p)?.len();
                Ok((localml_trust::sha256_file(p)?, size))
            })
            .collect::<std::io::Result<Vec<(String, u64)>>>()
    })
    .await??;
    let mut files = Vec::new();
    let mut todo = Vec::new();
    let mut already_there = 0;
    for ((inside, disk), (sha256, size)) in local.iter().zip(hashed) {
        let held = catalog
            .blob_status(BlobStatusRequest {
                sha256: sha256.clone(),
            })
            .await
            .map_err(failed)?
            .into_inner();
        if held.complete {
            already_there += 1;
        } else {
            todo.push((disk.clone(), sha256.clone(), size, held.received.min(size)));
        }
        files.push(CatalogFile {
            path: inside.clone(),
            sha256,
            size,
        });
    }
    let total_bytes: u64 = files.iter().map(|f| f.size).sum();
    let to_send: u64 = todo.iter().map(|(_, _, size, from)| size - from).sum();
    let bar = progress(to_send);
    let mut sent_bytes = 0;
    for (disk, sha256, size, from) in todo {
        sent_bytes += upload(catalog, &disk, &sha256, size, from, &bar).await?;
    }
    bar.finish_and_clear();
    Ok(Uploaded {
        files,
        total_bytes,
        sent_bytes,
        already_there,
    })
}

/// `localml runtime push`: the ONNX Runtime build `installed` into the scheduler's
/// catalog, for workers that have none.
pub async fn push_runtime(
    server: &str,
    installed: &localml_worker::runtime::Installed,
) -> anyhow::Result<(RuntimeBuild, Uploaded)> {
    let files = installed
        .files()
        .with_context(|| format!("{}", installed.dir.display()))?;
    let mut catalog = connect(server).await?;
    let mut sent = upload_files(&mut catalog, &files).await?;
    let build = catalog
        .put_runtime(RuntimeBuild {
            flavor: installed.flavor.name().into(),
            version: installed.version.clone(),
            files: std::mem::take(&mut sent.files),
            ..Default::default()
        })
        .await
        .map_err(failed)?
        .into_inner();
    Ok((build, sent))
}

/// The catalog's ONNX Runtime builds.
pub async fn runtimes(server: &str) -> anyhow::Result<Vec<RuntimeBuild>> {
    let mut catalog = connect(server).await?;
    Ok(catalog
        .list_runtimes(ListRuntimesRequest {})
        .await
        .map_err(failed)?
        .into_inner()
        .runtimes)
}

fn progress(total: u64) -> ProgressBar {
    use std::io::IsTerminal;
    if !std::io::stderr().is_terminal() || total == 0 {
        return ProgressBar::hidden();
    }
    let style = ProgressStyle::with_template(
        "{bar:30} {bytes}/{total_bytes} {bytes_per_sec} eta {eta} {msg}",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar());
    ProgressBar::new(total).with_style(style)
}

/// Sends `disk` from byte `from`; returns the bytes sent.
async fn upload(
    catalog: &mut CatalogClient<Connection>,
    disk: &Path,
    sha256: &str,
    size: u64,
    from: u64,
    bar: &ProgressBar,
) -> anyhow::Result<u64> {
    let name = disk.file_name().map(|n| n.to_string_lossy().into_owned());
    bar.set_message(name.unwrap_or_default());
    let (tx, rx) = tokio::sync::mpsc::channel::<BlobChunk>(4);
    let (file, sha, progress) = (disk.to_path_buf(), sha256.to_string(), bar.clone());
    let reader = tokio::task::spawn_blocking(move || -> std::io::Result<u64> {
        use std::io::{Read, Seek, SeekFrom};
        let mut f = std::fs::File::open(&file)?;
        f.seek(SeekFrom::Start(from))?;
        let mut at = from;
        loop {
            let mut buf = vec![0u8; CHUNK_BYTES.min((size - at) as usize)];
            f.read_exact(&mut buf)?;
            let n = buf.len() as u64;
            let chunk = BlobChunk {
                sha256: if at == from {
                    sha.clone()
                } else {
                    String::new()
                },
                size,
                offset: at,
                data: buf.into(),
            };
            if tx.blocking_send(chunk).is_err() {
                return Ok(at - from); // The call failed; its error says why.
            }
            at += n;
            progress.inc(n);
            if at >= size {
                return Ok(at - from);
            }
        }
    });
    let answer = catalog
        .upload_blob(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await;
    let sent = reader
        .await?
        .with_context(|| format!("{}", disk.display()))?;
    answer.map_err(|s| failed(s).context(format!("uploading {}", disk.display())))?;
    Ok(sent)
}

/// `name` or `name:version`.
pub fn parse_ref(text: &str) -> (String, String) {
    match text.rsplit_once(':') {
        Some((name, version)) => (name.to_string(), version.to_string()),
        None => (text.to_string(), String::new()),
    }
}

pub fn table(models: &[CatalogModel]) -> String {
    let rows: Vec<Vec<String>> = models
        .iter()
        .map(|m| {
            let size: u64 = m.files.iter().map(|f| f.size).sum();
            let variants: Vec<String> = std::iter::once("fp32".to_string())
                .chain(m.variants.iter().map(|v| v.name.clone()))
                .collect();
            vec![
                m.name.clone(),
                m.version.clone(),
                variants.join(","),
                m.files.len().to_string(),
                human_bytes(size),
                tensors(&m.inputs),
                tensors(&m.outputs),
            ]
        })
        .collect();
    crate::table::render(
        &[
            "MODEL", "VERSION", "VARIANTS", "FILES", "SIZE", "INPUTS", "OUTPUTS",
        ],
        &rows,
    )
}

fn tensors(list: &[CatalogTensor]) -> String {
    list.iter()
        .map(|t| format!("{} {} {:?}", t.name, t.datatype, t.shape))
        .collect::<Vec<_>>()
        .join(", ")
}

/// One version in detail.
pub fn show(m: &CatalogModel) -> String {
    let mut out = format!(
        "model:   {}\nversion: {}\nonnx:    IR {}, opset {}\n",
        m.name, m.version, m.ir_version, m.opset
    );
    for (label, list) in [("input", &m.inputs), ("output", &m.outputs)] {
        for t in list {
            out.push_str(&format!(
                "{label}:  {} {} {:?}\n",
                t.name, t.datatype, t.shape
            ));
        }
    }
    if m.measured_bytes > 0 {
        out.push_str(&format!(
            "memory:  {} (measured on {})\n",
            human_bytes(m.measured_bytes),
            m.measured_on
        ));
    }
    for v in &m.variants {
        let size: u64 = v.files.iter().map(|f| f.size).sum();
        let measured = if v.measured_bytes > 0 {
            format!(
                ", memory {} (measured on {})",
                human_bytes(v.measured_bytes),
                v.measured_on
            )
        } else {
            String::new()
        };
        out.push_str(&format!(
            "variant: {} {} file(s), {}{measured}\n",
            v.name,
            v.files.len(),
            human_bytes(size)
        ));
    }
    for f in &m.files {
        out.push_str(&format!(
            "file:    {} {} sha256:{}\n",
            f.path,
            human_bytes(f.size),
            f.sha256
        ));
    }
    if !m.config_yaml.trim().is_empty() {
        out.push_str("config.yaml:\n");
        for line in m.config_yaml.lines() {
            out.push_str(&format!("  {line}\n"));
        }
    }
    out
}

pub use localml_proto::units::human_bytes;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_three_layouts() {
        let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/models");
        let model_dir = local_model(&examples.join("text_classifier"), None).expect("model dir");
        assert_eq!(model_dir.name, "text_classifier");
        assert_eq!(model_dir.files.len(), 1);
        assert!(
            model_dir.files[0].1.ends_with("2/model.onnx"),
            "{model_dir:?}"
        );
        assert!(!model_dir.config_yaml.is_empty());
        let version_dir =
            local_model(&examples.join("image_classifier/1"), None).expect("version dir");
        assert_eq!(version_dir.name, "image_classifier");
        assert!(
            !version_dir.config_yaml.is_empty(),
            "the model's config.yaml"
        );
        let file =
            local_model(&examples.join("tensor_stats/1/model.onnx"), Some("stats")).expect("file");
        assert_eq!(
            (file.name.as_str(), file.files[0].0.as_str()),
            ("stats", "model.onnx")
        );
        let empty = std::env::temp_dir().join(format!("localml-empty-{}", std::process::id()));
        std::fs::create_dir_all(&empty).expect("dir");
        let err = local_model(&empty, None).expect_err("nothing to push");
        assert!(err.to_string().contains("no model.onnx"), "{err}");
    }

    #[test]
    fn refs() {
        assert_eq!(parse_ref("m:3"), ("m".into(), "3".into()));
        assert_eq!(parse_ref("m"), ("m".into(), String::new()));
    }
}
