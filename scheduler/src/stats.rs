//! Per-model request counters as the scheduler sees them (ModelStatistics).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use localml_proto::inference::{InferStatistics, ModelStatistics, StatisticDuration};
use localml_proto::localml::v1::StatsWindow;
use localml_serving::metrics::Histogram;

/// How often the recent windows roll ([`Stats::roll`]) and how many are kept: the last
/// five minutes.
pub const WINDOW: Duration = Duration::from_secs(10);
pub const WINDOWS: usize = 30;
/// The shortest last window shown on its own, in seconds.
const MIN_WINDOW_S: f64 = 2.0;

/// The model label of requests for models the cluster does not have.
pub const UNKNOWN_MODEL: &str = "<unknown>";

/// Whether a request named a model and version the cluster has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    Known,
    UnknownModel,
    UnknownVersion,
}

#[derive(Debug, Default, Clone)]
struct Counters {
    success: u64,
    success_ns: u64,
    /// Of the successful requests' time, how much they waited in the scheduler (queue,
    /// scheduling cycle) before leaving for the worker that answered.
    queue_ns: u64,
    fail: u64,
    fail_ns: u64,
    last_ms: u64,
    /// The successful requests' latency, this version alone.
    latency: Arc<Histogram>,
}

/// One version's succeeded and failed requests and latency histogram (cumulative).
type Counts = (u64, u64, Vec<u64>);

/// Every version's counts at one moment; two readings give a window.
struct Reading {
    at_ms: u64,
    /// (model, version) -> its counts.
    counts: HashMap<(String, String), Counts>,
}

/// One model version's figures for the page and `ListModels`.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct VersionFigures {
    pub ok: u64,
    pub failed: u64,
    pub latency_cumulative: Vec<u64>,
    /// The last minutes, oldest first; the last window ends now.
    pub recent: Vec<StatsWindow>,
}

/// How long one request took in the scheduler, and how much of that before it left for
/// the worker (Triton's queue time; the rest is the worker's, Triton's compute time).
#[derive(Debug, Clone, Copy)]
pub struct Times {
    pub total: Duration,
    pub queued: Duration,
}

#[derive(Default)]
pub struct Stats {
    /// Model name, then requested version; nested so recording allocates no key.
    by_model: Mutex<HashMap<String, HashMap<String, Counters>>>,
    /// Prometheus series per model: requests by status code, and latency.
    series: Mutex<HashMap<String, Series>>,
    /// Readings every [`WINDOW`], the oldest first, at most [`WINDOWS`].
    readings: Mutex<VecDeque<Reading>>,
}

#[derive(Default)]
pub struct Series {
    pub codes: HashMap<&'static str, u64>,
    pub latency: std::sync::Arc<localml_serving::metrics::Histogram>,
}

impl Stats {
    /// Per model: requests by code and the latency histogram (copied out).
    pub fn series(
        &self,
    ) -> Vec<(
        String,
        HashMap<&'static str, u64>,
        std::sync::Arc<localml_serving::metrics::Histogram>,
    )> {
        let map = self.series.lock().unwrap_or_else(|p| p.into_inner());
        let mut out: Vec<_> = map
            .iter()
            .map(|(m, s)| {
                (
                    m.clone(),
                    s.codes.clone(),
                    std::sync::Arc::clone(&s.latency),
                )
            })
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// Counts one request to `model`/`version` (the version that served it, or would
    /// have: never "" for a model the cluster has). Requests for a model the cluster does not
    /// have count under the model label [`UNKNOWN_MODEL`] in the metric series only, and
    /// those for an unknown version only in the model's series: the per-version statistics
    /// hold what exists, whatever names clients send.
    pub fn record(&self, model: &str, version: &str, seen: Seen, code: tonic::Code, times: Times) {
        let elapsed = times.total;
        let ok = code == tonic::Code::Ok;
        let model = match seen {
            Seen::UnknownModel => UNKNOWN_MODEL,
            _ => model,
        };
        {
            let mut series = self.series.lock().unwrap_or_else(|p| p.into_inner());
            if !series.contains_key(model) {
                series.insert(model.to_string(), Series::default());
            }
            if let Some(s) = series.get_mut(model) {
                *s.codes
                    .entry(localml_serving::metrics::code_label(code))
                    .or_default() += 1;
                if ok {
                    s.latency.observe(elapsed.as_secs_f64());
                }
            }
        }
        if seen != Seen::Known {
            return;
        }
        let ns = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        let now_ms = localml_proto::time::unix_ms();
        let mut map = self.by_model.lock().unwrap_or_else(|p| p.into_inner());
        if !map.contains_key(model) {
            map.insert(model.to_string(), HashMap::new());
        }
        let Some(versions) = map.get_mut(model) else {
            return;
        };
        if !versions.contains_key(version) {
            versions.insert(version.to_string(), Counters::default());
        }
        let Some(c) = versions.get_mut(version) else {
            return;
        };
        if ok {
            c.latency.observe(elapsed.as_secs_f64());
            c.success += 1;
            c.success_ns = c.success_ns.saturating_add(ns);
            let queued = u64::try_from(times.queued.as_nanos()).unwrap_or(u64::MAX);
            c.queue_ns = c.queue_ns.saturating_add(queued.min(ns));
        } else {
            c.fail += 1;
            c.fail_ns = c.fail_ns.saturating_add(ns);
        }
        c.last_ms = now_ms;
    }

    /// Takes a reading of every version's counts (every [`WINDOW`], by the scheduler's
    /// task); the last [`WINDOWS`] are kept.
    pub fn roll(&self, now_ms: u64) {
        let counts = {
            let map = self.by_model.lock().unwrap_or_else(|p| p.into_inner());
            map.iter()
                .flat_map(|(m, versions)| {
                    versions.iter().map(move |(v, c)| {
                        (
                            (m.clone(), v.clone()),
                            (c.success, c.fail, c.latency.cumulative()),
                        )
                    })
                })
                .collect()
        };
        let mut readings = self.readings.lock().unwrap_or_else(|p| p.into_inner());
        readings.push_back(Reading {
            at_ms: now_ms,
            counts,
        });
        while readings.len() > WINDOWS {
            readings.pop_front();
        }
    }

    /// `model`'s `version` since the start and over the last minutes: the windows between
    /// readings, and from the last reading to now. None for a version that never served.
    pub fn version(&self, model: &str, version: &str, now_ms: u64) -> Option<VersionFigures> {
        let current = {
            let map = self.by_model.lock().unwrap_or_else(|p| p.into_inner());
            let c = map.get(model)?.get(version)?;
            (c.success, c.fail, c.latency.cumulative())
        };
        let key = (model.to_string(), version.to_string());
        let readings = self.readings.lock().unwrap_or_else(|p| p.into_inner());
        let mut points: Vec<(u64, Counts)> = readings
            .iter()
            .map(|r| {
                let counts = r.counts.get(&key).cloned().unwrap_or_default();
                (r.at_ms, counts)
            })
            .collect();
        points.push((now_ms, current.clone()));
        let mut recent: Vec<StatsWindow> = points
            .windows(2)
            .map(|pair| {
                let ((from, a), (to, b)) = (&pair[0], &pair[1]);
                StatsWindow {
                    end_unix_ms: *to,
                    seconds: to.saturating_sub(*from) as f64 / 1e3,
                    requests_ok: b.0.saturating_sub(a.0),
                    requests_failed: b.1.saturating_sub(a.1),
                    latency_cumulative: b
                        .2
                        .iter()
                        .enumerate()
                        .map(|(i, n)| n.saturating_sub(a.2.get(i).copied().unwrap_or(0)))
                        .collect(),
                }
            })
            .collect();
        // A window only just begun (a request a few milliseconds after a roll would read as
        // hundreds a second) joins the one before.
        if recent.len() >= 2 && recent.last().is_some_and(|w| w.seconds < MIN_WINDOW_S) {
            if let Some(last) = recent.pop() {
                if let Some(before) = recent.last_mut() {
                    before.end_unix_ms = last.end_unix_ms;
                    before.seconds += last.seconds;
                    before.requests_ok += last.requests_ok;
                    before.requests_failed += last.requests_failed;
                    for (b, l) in before
                        .latency_cumulative
                        .iter_mut()
                        .zip(&last.latency_cumulative)
                    {
                        *b += l;
                    }
                }
            }
        }
        Some(VersionFigures {
            ok: current.0,
            failed: current.1,
            latency_cumulative: current.2,
            recent,
        })
    }

    /// Statistics for `model` (all models when empty) and `version` (all versions when
    /// empty), one entry per version that served, as Triton reports them: every version
    /// in `existing` (the cluster's model versions) has an entry, with zero counts until
    /// it serves, so a client that reads statistics before and after a run (Triton's
    /// perf_analyzer) finds the version at both ends.
    pub fn snapshot(
        &self,
        model: &str,
        version: &str,
        existing: &[(String, String)],
    ) -> Vec<ModelStatistics> {
        let map = self.by_model.lock().unwrap_or_else(|p| p.into_inner());
        let wanted = |m: &str, v: &str| {
            (model.is_empty() || m == model) && (version.is_empty() || v == version)
        };
        let mut all: std::collections::BTreeMap<(&str, &str), Counters> = Default::default();
        for (m, v) in existing {
            all.insert((m.as_str(), v.as_str()), Counters::default());
        }
        for (m, versions) in map.iter() {
            for (v, c) in versions {
                all.insert((m.as_str(), v.as_str()), c.clone());
            }
        }
        all.into_iter()
            .filter(|((m, v), _)| wanted(m, v))
            .map(|((m, v), c)| ModelStatistics {
                name: m.to_string(),
                version: v.to_string(),
                last_inference: c.last_ms,
                inference_count: c.success,
                execution_count: c.success,
                inference_stats: Some(InferStatistics {
                    success: Some(StatisticDuration {
                        count: c.success,
                        ns: c.success_ns,
                    }),
                    fail: Some(StatisticDuration {
                        count: c.fail,
                        ns: c.fail_ns,
                    }),
                    // Triton's split of a successful request's time, which
                    // perf_analyzer reads: waiting in the scheduler (queue), then at
                    // the worker (compute_infer; the scheduler converts no tensors, so
                    // compute_input and compute_output take no time here).
                    queue: Some(StatisticDuration {
                        count: c.success,
                        ns: c.queue_ns,
                    }),
                    compute_input: Some(StatisticDuration {
                        count: c.success,
                        ns: 0,
                    }),
                    compute_infer: Some(StatisticDuration {
                        count: c.success,
                        ns: c.success_ns.saturating_sub(c.queue_ns),
                    }),
                    compute_output: Some(StatisticDuration {
                        count: c.success,
                        ns: 0,
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `ms` in all, half of it queued.
    fn times(ms: u64) -> Times {
        Times {
            total: Duration::from_millis(ms),
            queued: Duration::from_millis(ms) / 2,
        }
    }

    #[test]
    fn counts_success_and_failure() {
        let s = Stats::default();
        s.record("m", "", Seen::Known, tonic::Code::Ok, times(2));
        s.record("m", "", Seen::Known, tonic::Code::NotFound, times(1));
        s.record("n", "1", Seen::Known, tonic::Code::Ok, times(1));
        let series = s.series();
        assert_eq!(series[0].0, "m");
        assert_eq!(series[0].1.get("OK"), Some(&1));
        assert_eq!(series[0].1.get("NOT_FOUND"), Some(&1));
        assert_eq!(series[0].2.count(), 1);
        let m = &s.snapshot("m", "", &[])[0];
        let st = m.inference_stats.as_ref().expect("stats");
        assert_eq!(
            st.success.as_ref().map(|d| (d.count, d.ns)),
            Some((1, 2_000_000))
        );
        assert_eq!(st.fail.as_ref().map(|d| d.count), Some(1));
        assert_eq!(
            st.queue.as_ref().map(|d| (d.count, d.ns)),
            Some((1, 1_000_000))
        );
        assert_eq!(
            st.compute_infer.as_ref().map(|d| (d.count, d.ns)),
            Some((1, 1_000_000))
        );
        assert_eq!(s.snapshot("", "", &[]).len(), 2);
    }

    #[test]
    fn every_existing_version_has_an_entry() {
        let s = Stats::default();
        s.record("m", "2", Seen::Known, tonic::Code::Ok, times(1));
        let existing = [
            ("m".to_string(), "1".to_string()),
            ("m".to_string(), "2".to_string()),
            ("n".to_string(), "1".to_string()),
        ];
        let got: Vec<(String, String, u64)> = s
            .snapshot("m", "", &existing)
            .into_iter()
            .map(|m| (m.name, m.version, m.inference_count))
            .collect();
        assert_eq!(
            got,
            [
                ("m".to_string(), "1".to_string(), 0),
                ("m".to_string(), "2".to_string(), 1)
            ]
        );
        let one = s.snapshot("m", "2", &existing);
        assert_eq!(one.len(), 1);
        assert_eq!(one[0].inference_count, 1);
        assert_eq!(s.snapshot("", "", &existing).len(), 3);
    }

    #[test]
    fn recent_windows_hold_what_happened_in_them() {
        let s = Stats::default();
        assert_eq!(s.version("m", "1", 0), None);
        s.roll(1_000);
        s.record("m", "1", Seen::Known, tonic::Code::Ok, times(2));
        s.record("m", "1", Seen::Known, tonic::Code::Ok, times(2));
        s.record("m", "2", Seen::Known, tonic::Code::Ok, times(2));
        s.roll(11_000);
        s.record("m", "1", Seen::Known, tonic::Code::Ok, times(300));
        s.record("m", "1", Seen::Known, tonic::Code::Internal, times(1));
        let f = s.version("m", "1", 16_000).expect("served");
        assert_eq!((f.ok, f.failed), (3, 1));
        assert_eq!(f.latency_cumulative.last(), Some(&3));
        let windows: Vec<(u64, f64, u64, u64, u64)> = f
            .recent
            .iter()
            .map(|w| {
                let n = *w.latency_cumulative.last().expect("buckets");
                (
                    w.end_unix_ms,
                    w.seconds,
                    w.requests_ok,
                    w.requests_failed,
                    n,
                )
            })
            .collect();
        assert_eq!(
            windows,
            [(11_000, 10.0, 2, 0, 2), (16_000, 5.0, 1, 1, 1)],
            "two requests in the first window, the 300 ms one and a failure in the last"
        );
        // The last window's latency is the slow request alone.
        let p50 = localml_serving::metrics::quantile(
            &localml_serving::metrics::LATENCY_BUCKETS,
            &f.recent[1].latency_cumulative,
            0.5,
        )
        .expect("a request");
        assert!((0.25..=0.5).contains(&p50), "{p50}");
        // A last window of half a second joins the one before: 10.5 s, the slow request
        // and the one just now.
        s.roll(21_000);
        s.record("m", "1", Seen::Known, tonic::Code::Ok, times(2));
        let f = s.version("m", "1", 21_500).expect("served");
        let last = f.recent.last().expect("windows");
        assert_eq!(
            (last.end_unix_ms, last.seconds, last.requests_ok),
            (21_500, 10.5, 2)
        );
        assert_eq!(last.latency_cumulative.last(), Some(&2));
        assert_eq!(f.recent.len(), 2);
        // Only the last WINDOWS readings are kept.
        for i in 0..(WINDOWS as u64 + 5) {
            s.roll(20_000 + i * 10_000);
        }
        let f = s.version("m", "1", 400_000).expect("served");
        assert_eq!(f.recent.len(), WINDOWS);
        assert!(f.recent.iter().all(|w| w.requests_ok == 0));
    }
}
