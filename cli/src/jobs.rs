//! `localml jobs`: submit, get, watch (with a progress line over many jobs), cancel and
//! list durable async jobs.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::time::{Duration, Instant};

use crate::client::Connection;
use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use localml_proto::inference::ModelInferRequest;
use localml_proto::localml::v1::jobs_client::JobsClient;
use localml_proto::localml::v1::*;
use localml_proto::time::unix_ms;

use crate::client;

pub async fn connect(server: &str) -> anyhow::Result<JobsClient<Connection>> {
    let channel = client::connect(server, Duration::from_secs(5)).await?;
    Ok(JobsClient::new(channel)
        .max_decoding_message_size(usize::MAX)
        .max_encoding_message_size(usize::MAX))
}

fn status_error(s: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{:?}: {}", s.code(), s.message())
}

pub fn state_name(state: i32) -> &'static str {
    match JobState::try_from(state) {
        Ok(JobState::Pending) => "Pending",
        Ok(JobState::Running) => "Running",
        Ok(JobState::Succeeded) => "Succeeded",
        Ok(JobState::Failed) => "Failed",
        Ok(JobState::Cancelled) => "Cancelled",
        _ => "Unknown",
    }
}

fn ended(state: i32) -> bool {
    matches!(
        JobState::try_from(state),
        Ok(JobState::Succeeded | JobState::Failed | JobState::Cancelled)
    )
}

/// `any`, `prefer_mains` or `mains_only`.
pub fn parse_power(text: &str) -> anyhow::Result<PowerPolicy> {
    Ok(match text {
        "any" => PowerPolicy::Any,
        "prefer_mains" => PowerPolicy::PreferMains,
        "mains_only" => PowerPolicy::MainsOnly,
        other => anyhow::bail!("--power '{other}': expected any, prefer_mains or mains_only"),
    })
}

/// `90s`, `30m`, `8h` or plain seconds.
pub fn parse_duration(text: &str) -> anyhow::Result<Duration> {
    let (number, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => text.split_at(i),
        None => (text, "s"),
    };
    let n: u64 = number
        .parse()
        .with_context(|| format!("'{text}': expected a duration like 90s, 30m or 8h"))?;
    let seconds = match unit {
        "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86_400,
        _ => anyhow::bail!("'{text}': unit must be s, m, h or d"),
    };
    Ok(Duration::from_secs(seconds))
}

pub struct SubmitOptions {
    pub priority: i64,
    pub deadline: Option<Duration>,
    pub idempotency_key: String,
    pub power: PowerPolicy,
    /// Run only on mains with the worker's battery or UPS at least this full.
    pub min_battery: Option<f32>,
    pub tenant: String,
    pub count: u32,
}

/// Submits `count` jobs of `request` and prints their ids, one a line.
pub async fn submit(
    server: &str,
    request: ModelInferRequest,
    options: SubmitOptions,
) -> anyhow::Result<Vec<String>> {
    let mut jobs = connect(server).await?;
    let deadline_unix_ms = match options.deadline {
        Some(d) => unix_ms() + d.as_millis() as u64,
        None => 0,
    };
    let mut ids = Vec::new();
    for i in 0..options.count {
        let key = match (&options.idempotency_key[..], options.count) {
            ("", _) => String::new(),
            (key, 1) => key.to_string(),
            (key, _) => format!("{key}-{i}"),
        };
        let job = jobs
            .submit(SubmitJobRequest {
                request: Some(request.clone()),
                priority: options.priority,
                deadline_unix_ms,
                idempotency_key: key,
                power_policy: options.power as i32,
                tenant: options.tenant.clone(),
                min_battery_percent: options.min_battery,
            })
            .await
            .map_err(status_error)?
            .into_inner();
        println!("{}", job.id);
        ids.push(job.id);
    }
    Ok(ids)
}

fn age(since_ms: u64) -> String {
    if since_ms == 0 {
        return "-".into();
    }
    let s = unix_ms().saturating_sub(since_ms) / 1000;
    match s {
        0..=119 => format!("{s}s"),
        120..=7199 => format!("{}m", s / 60),
        _ => format!("{}h", s / 3600),
    }
}

/// Prints one job and, once it succeeded, its outputs.
pub async fn get(server: &str, id: String, show: usize) -> anyhow::Result<()> {
    let job = connect(server)
        .await?
        .get(GetJobRequest { id })
        .await
        .map_err(status_error)?
        .into_inner();
    println!("job {}: {}", job.id, state_name(job.state));
    println!(
        "  model {} version {}  priority {}  tenant '{}'  power {:?}  attempts {}",
        job.model_name,
        if job.model_version.is_empty() {
            "newest"
        } else {
            &job.model_version
        },
        job.priority,
        job.tenant,
        job.power_policy(),
        job.attempts
    );
    if let Some(min) = job.min_battery_percent {
        println!("  runs on mains with the battery or UPS at {min}% or more");
    }
    if !job.worker.is_empty() {
        println!("  worker {}", job.worker);
    }
    if !job.message.is_empty() {
        println!("  {}", job.message);
    }
    if let Some(result) = &job.result {
        client::print_outputs(result, show)?;
    }
    Ok(())
}

pub async fn cancel(server: &str, id: String) -> anyhow::Result<()> {
    let job = connect(server)
        .await?
        .cancel(CancelJobRequest { id })
        .await
        .map_err(status_error)?
        .into_inner();
    println!("job {}: {}", job.id, state_name(job.state));
    Ok(())
}

/// The `localml jobs list` table.
pub fn table(list: &[Job]) -> String {
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|j| {
            vec![
                j.id.clone(),
                state_name(j.state).to_string(),
                j.model_name.clone(),
                j.priority.to_string(),
                j.tenant.clone(),
                format!("{:?}", j.power_policy()),
                j.attempts.to_string(),
                j.worker.clone(),
                age(j.created_unix_ms),
                j.message.clone(),
            ]
        })
        .collect();
    crate::table::render(
        &[
            "ID", "STATE", "MODEL", "PRIORITY", "TENANT", "POWER", "ATTEMPTS", "WORKER", "AGE",
            "MESSAGE",
        ],
        &rows,
    )
}

/// Lists jobs, following pages up to `limit`.
pub async fn list(
    server: &str,
    state: Option<JobState>,
    tenant: String,
    limit: usize,
) -> anyhow::Result<()> {
    let mut client = connect(server).await?;
    let mut all = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = client
            .list(ListJobsRequest {
                state: state.map(|s| s as i32).unwrap_or(0),
                tenant: tenant.clone(),
                page_size: 500,
                page_token,
                newest_first: false,
            })
            .await
            .map_err(status_error)?
            .into_inner();
        all.extend(page.jobs);
        if page.next_page_token.is_empty() || all.len() >= limit {
            break;
        }
        page_token = page.next_page_token;
    }
    all.truncate(limit);
    println!("{}", table(&all));
    Ok(())
}

pub fn parse_state(text: &str) -> anyhow::Result<JobState> {
    Ok(match text.to_ascii_lowercase().as_str() {
        "pending" => JobState::Pending,
        "running" => JobState::Running,
        "succeeded" => JobState::Succeeded,
        "failed" => JobState::Failed,
        "cancelled" | "canceled" => JobState::Cancelled,
        _ => anyhow::bail!(
            "--state '{text}': expected pending, running, succeeded, failed or cancelled"
        ),
    })
}

/// Counts by state, for the progress line.
#[derive(Default, Debug, PartialEq, Eq)]
pub struct Progress {
    pub pending: usize,
    pub running: usize,
    pub succeeded: usize,
    pub failed: usize,
    pub cancelled: usize,
}

impl Progress {
    pub fn of(states: &HashMap<String, i32>) -> Progress {
        let mut p = Progress::default();
        for s in states.values() {
            match JobState::try_from(*s) {
                Ok(JobState::Running) => p.running += 1,
                Ok(JobState::Succeeded) => p.succeeded += 1,
                Ok(JobState::Failed) => p.failed += 1,
                Ok(JobState::Cancelled) => p.cancelled += 1,
                _ => p.pending += 1,
            }
        }
        p
    }

    /// Counts jobs not heard of yet (of `total` watched) as pending.
    pub fn with_unseen(mut self, total: usize) -> Progress {
        let seen = self.pending + self.running + self.done();
        self.pending += total.saturating_sub(seen);
        self
    }

    pub fn done(&self) -> usize {
        self.succeeded + self.failed + self.cancelled
    }

    /// What follows the count of ended jobs:
    /// `(succeeded 310, failed 2, cancelled 0); running 8, pending 180`.
    pub fn counts(&self) -> String {
        format!(
            "(succeeded {}, failed {}, cancelled {}); running {}, pending {}",
            self.succeeded, self.failed, self.cancelled, self.running, self.pending
        )
    }

    /// `[#########.........] 312/500 ended (succeeded 310, failed 2, cancelled 0); running 8, pending 180`:
    /// the plain form of the progress bar, for logs, pipes and the final summary.
    pub fn line(&self, total: usize) -> String {
        let filled = (self.done() * BAR_WIDTH)
            .checked_div(total)
            .unwrap_or(BAR_WIDTH)
            .min(BAR_WIDTH);
        format!(
            "[{}{}] {}/{} ended {}",
            "#".repeat(filled),
            ".".repeat(BAR_WIDTH - filled),
            self.done(),
            total,
            self.counts()
        )
    }
}

/// Cells the progress bar fills, in both of its forms.
const BAR_WIDTH: usize = 30;

/// Where the progress over many jobs goes: an indicatif bar redrawn in place on a
/// terminal; otherwise a plain [`Progress::line`] when it changed, at most one a second,
/// so logs stay short and scripts (and the integration tests) can read them.
enum ProgressOutput {
    Bar(ProgressBar),
    Lines { last: String, at: Option<Instant> },
}

/// Least time between two plain progress lines.
const LINE_INTERVAL: Duration = Duration::from_secs(1);

impl ProgressOutput {
    fn new(terminal: bool) -> ProgressOutput {
        if !terminal {
            return ProgressOutput::Lines {
                last: String::new(),
                at: None,
            };
        }
        // The same shape as `Progress::line`. The template is fixed, so it only fails to
        // parse if someone breaks it here; the default bar is still a bar.
        let style = ProgressStyle::with_template(&format!(
            "[{{bar:{BAR_WIDTH}}}] {{pos}}/{{len}} ended {{msg}}"
        ))
        .map(|s| s.progress_chars("#."))
        .unwrap_or_else(|_| ProgressStyle::default_bar());
        ProgressOutput::Bar(ProgressBar::new(0).with_style(style))
    }

    /// A job that failed or was cancelled gets a line of its own, above the bar.
    fn ended_badly(&self, job: &Job) {
        let line = format!("job {} {}: {}", job.id, state_name(job.state), job.message);
        match self {
            ProgressOutput::Bar(bar) => bar.println(line),
            ProgressOutput::Lines { .. } => eprintln!("{line}"),
        }
    }

    fn show(&mut self, progress: &Progress, total: usize) {
        match self {
            ProgressOutput::Bar(bar) => {
                bar.set_length(total as u64);
                bar.set_position(progress.done() as u64);
                bar.set_message(progress.counts());
            }
            ProgressOutput::Lines { last, at } => {
                let line = progress.line(total);
                let due = at.is_none_or(|t| t.elapsed() >= LINE_INTERVAL);
                if line != *last && due {
                    eprintln!("{line}");
                    *last = line;
                    *at = Some(Instant::now());
                }
            }
        }
    }

    /// Takes the bar off the screen before the summary is printed.
    fn finish(&self) {
        if let ProgressOutput::Bar(bar) = self {
            bar.finish_and_clear();
        }
    }
}

/// Follows jobs (all when `ids` is empty) until the given ones end: a progress line on
/// a terminal, a line per change otherwise. Fails when any of them failed or was
/// cancelled.
pub async fn watch(server: &str, ids: Vec<String>) -> anyhow::Result<()> {
    let mut stream = connect(server)
        .await?
        .watch(WatchJobsRequest { ids: ids.clone() })
        .await
        .map_err(status_error)?
        .into_inner();
    let many = ids.len() != 1;
    let mut output = ProgressOutput::new(std::io::stderr().is_terminal());
    let mut states: HashMap<String, i32> = HashMap::new();
    // Watching all jobs, the total is every job heard of so far.
    let watched = |states: &HashMap<String, i32>| {
        if ids.is_empty() {
            states.len()
        } else {
            ids.len()
        }
    };
    while let Some(job) = stream.message().await.map_err(status_error)? {
        let changed = states.insert(job.id.clone(), job.state) != Some(job.state);
        if !many && changed {
            let detail = if job.message.is_empty() {
                String::new()
            } else {
                format!(": {}", job.message)
            };
            println!("job {} {}{detail}", job.id, state_name(job.state));
            continue;
        }
        if ended(job.state) && job.state != JobState::Succeeded as i32 && changed {
            output.ended_badly(&job);
        }
        let total = watched(&states);
        output.show(&Progress::of(&states).with_unseen(total), total);
    }
    output.finish();
    let total = watched(&states);
    let progress = Progress::of(&states).with_unseen(total);
    if many {
        println!("{}", progress.line(total));
    }
    if progress.failed + progress.cancelled > 0 {
        anyhow::bail!(
            "{} job(s) failed and {} cancelled",
            progress.failed,
            progress.cancelled
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_policies() {
        assert_eq!(parse_duration("90").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("30m").unwrap(), Duration::from_secs(1800));
        assert_eq!(parse_duration("8h").unwrap(), Duration::from_secs(28_800));
        assert!(parse_duration("8x").is_err());
        assert!(parse_duration("h").is_err());
        assert_eq!(parse_power("mains_only").unwrap(), PowerPolicy::MainsOnly);
        assert!(parse_power("solar").is_err());
        assert_eq!(parse_state("Failed").unwrap(), JobState::Failed);
        assert!(parse_state("done").is_err());
    }

    #[test]
    fn progress_counts_and_draws() {
        let mut states = HashMap::new();
        for (i, s) in [
            JobState::Succeeded,
            JobState::Succeeded,
            JobState::Failed,
            JobState::Running,
            JobState::Pending,
        ]
        .iter()
        .enumerate()
        {
            states.insert(i.to_string(), *s as i32);
        }
        let p = Progress::of(&states);
        assert_eq!(
            p,
            Progress {
                pending: 1,
                running: 1,
                succeeded: 2,
                failed: 1,
                cancelled: 0
            }
        );
        let line = p.line(10);
        assert_eq!(
            Progress::of(&states).with_unseen(10).pending,
            6,
            "5 unseen + 1 pending"
        );
        assert!(
            line.starts_with(&format!("[{}{}]", "#".repeat(9), ".".repeat(21))),
            "{line}"
        );
        assert!(
            line.contains("3/10 ended (succeeded 2, failed 1, cancelled 0); running 1, pending 1"),
            "{line}"
        );
    }
}
