//! Per-model request counters as the scheduler sees them (ModelStatistics).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use localml_proto::inference::{InferStatistics, ModelStatistics, StatisticDuration};

/// The model label of requests for models the cluster does not have.
pub const UNKNOWN_MODEL: &str = "<unknown>";

/// Whether a request named a model and version the cluster has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    Known,
    UnknownModel,
    UnknownVersion,
}

#[derive(Debug, Default, Clone, Copy)]
struct Counters {
    success: u64,
    success_ns: u64,
    fail: u64,
    fail_ns: u64,
    last_ms: u64,
}

#[derive(Default)]
pub struct Stats {
    /// Model name, then requested version; nested so recording allocates no key.
    by_model: Mutex<HashMap<String, HashMap<String, Counters>>>,
    /// Prometheus series per model: requests by status code, and latency.
    series: Mutex<HashMap<String, Series>>,
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

    /// Counts one request to `model`/`version`. Requests for a model the cluster does not
    /// have count under the model label [`UNKNOWN_MODEL`] in the metric series only, and
    /// those for an unknown version only in the model's series: the per-version statistics
    /// hold what exists, whatever names clients send.
    pub fn record(
        &self,
        model: &str,
        version: &str,
        seen: Seen,
        code: tonic::Code,
        elapsed: Duration,
    ) {
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
            c.success += 1;
            c.success_ns += ns;
        } else {
            c.fail += 1;
            c.fail_ns += ns;
        }
        c.last_ms = now_ms;
    }

    /// Statistics for `model` (all models when empty); the version is what clients asked
    /// for ("" when they let the scheduler choose).
    pub fn snapshot(&self, model: &str) -> Vec<ModelStatistics> {
        let map = self.by_model.lock().unwrap_or_else(|p| p.into_inner());
        let mut out: Vec<ModelStatistics> = map
            .iter()
            .filter(|(m, _)| model.is_empty() || m.as_str() == model)
            .flat_map(|(m, versions)| versions.iter().map(move |(v, c)| (m, v, c)))
            .map(|(m, v, c)| ModelStatistics {
                name: m.clone(),
                version: v.clone(),
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
                    ..Default::default()
                }),
                ..Default::default()
            })
            .collect();
        out.sort_by(|a, b| (&a.name, &a.version).cmp(&(&b.name, &b.version)));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_success_and_failure() {
        let s = Stats::default();
        s.record(
            "m",
            "",
            Seen::Known,
            tonic::Code::Ok,
            Duration::from_millis(2),
        );
        s.record(
            "m",
            "",
            Seen::Known,
            tonic::Code::NotFound,
            Duration::from_millis(1),
        );
        s.record(
            "n",
            "1",
            Seen::Known,
            tonic::Code::Ok,
            Duration::from_millis(1),
        );
        let series = s.series();
        assert_eq!(series[0].0, "m");
        assert_eq!(series[0].1.get("OK"), Some(&1));
        assert_eq!(series[0].1.get("NOT_FOUND"), Some(&1));
        assert_eq!(series[0].2.count(), 1);
        let m = &s.snapshot("m")[0];
        let st = m.inference_stats.as_ref().expect("stats");
        assert_eq!(
            st.success.as_ref().map(|d| (d.count, d.ns)),
            Some((1, 2_000_000))
        );
        assert_eq!(st.fail.as_ref().map(|d| d.count), Some(1));
        assert_eq!(s.snapshot("").len(), 2);
    }
}
