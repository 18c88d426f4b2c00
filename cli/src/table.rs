//! Plain-text tables for operators, drawn by comfy-table.

use comfy_table::{presets, Table};

use localml_proto::localml::v1::{Deployment, ModelInfo, PowerStatus, WorkerInfo, WorkerStatus};

fn gib(bytes: u64) -> String {
    format!("{:.1}", bytes as f64 / (1024.0 * 1024.0 * 1024.0))
}

/// Blank columns between cells, as `kubectl get` prints them.
const COLUMN_GAP: u16 = 2;

/// Renders rows with left-aligned columns separated by two spaces.
///
/// comfy-table's `NOTHING` preset draws no borders and no header rule, so every line is a
/// header or a row that `grep` and `awk` can take apart; its default one-space padding on
/// both sides is replaced by a gap after each column but the last, so lines start at the
/// first character of the first cell. `trim_fmt` drops the padding after the last cell.
pub fn render(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut table = Table::new();
    table
        .load_style(presets::NOTHING)
        .set_header(header.to_vec())
        .add_rows(rows.iter().cloned());
    let last = table.column_count().saturating_sub(1);
    for (i, column) in table.column_iter_mut().enumerate() {
        column.set_padding((0, if i == last { 0 } else { COLUMN_GAP }));
    }
    table.trim_fmt()
}

/// The power source, and the UPS with its NUT status when the worker reads one.
pub(crate) fn power_cell(power: &PowerStatus) -> String {
    let source = localml_proto::names::power_source(power.source);
    if power.ups.is_empty() {
        return source.to_string();
    }
    let status = if power.ups_status.is_empty() {
        "no answer"
    } else {
        &power.ups_status
    };
    format!("{source} (UPS {} {status})", power.ups)
}

/// Battery charge, and the runtime left when the UPS reports it.
pub(crate) fn battery_cell(power: &PowerStatus) -> String {
    let charge = power
        .battery_percent
        .map(|p| format!("{p:.0}%"))
        .unwrap_or_else(|| "-".into());
    match power.battery_runtime_seconds {
        Some(s) => format!("{charge} {}m left", s / 60),
        None => charge,
    }
}

/// Joules per inference of a worker: its models' figures averaged, weighted by their
/// inferences; `None` until one is measured.
fn joules_per_inference(status: &WorkerStatus) -> Option<f64> {
    let (joules, count) = status
        .models
        .iter()
        .filter(|m| m.joules_per_inference.is_finite() && m.joules_per_inference > 0.0)
        .fold((0.0, 0u64), |(j, n), m| {
            let weight = m.inference_count.max(1);
            (j + m.joules_per_inference * weight as f64, n + weight)
        });
    (count > 0).then(|| joules / count as f64)
}

/// The power draw and joules per inference, `~` marking an estimate from configured
/// watts: `~38.0 W 0.0120 J/inf`; `-` when the worker measures nothing.
pub(crate) fn energy_cell(status: &WorkerStatus) -> String {
    let power = status.power.clone().unwrap_or_default();
    let Some(watts) = power.power_watts.filter(|w| w.is_finite()) else {
        return "-".into();
    };
    let mark = if power.energy_estimated { "~" } else { "" };
    match joules_per_inference(status) {
        Some(j) => format!("{mark}{watts:.1} W {j:.4} J/inf"),
        None => format!("{mark}{watts:.1} W"),
    }
}

/// The `localml workers` table.
pub fn workers(list: &[WorkerInfo]) -> String {
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|w| {
            let s = w.status.clone().unwrap_or_default();
            let power = s.power.clone().unwrap_or_default();
            let mut providers: Vec<String> = s
                .models
                .iter()
                .map(|m| {
                    m.execution_provider
                        .trim_end_matches("ExecutionProvider")
                        .to_string()
                })
                .collect();
            providers.sort();
            providers.dedup();
            let queue: u32 = s.models.iter().map(|m| m.queue_depth).sum();
            let in_flight: u32 = s.models.iter().map(|m| m.in_flight).sum();
            let mut models: Vec<String> = s
                .models
                .iter()
                .map(|m| format!("{}:{}", m.name, m.version))
                .collect();
            models.sort();
            vec![
                s.name.clone(),
                std::iter::once(localml_proto::names::worker_state(w.state).to_string())
                    .chain(w.cordoned.then(|| "Cordoned".to_string()))
                    .chain(w.conditions.iter().cloned())
                    .collect::<Vec<_>>()
                    .join(","),
                if providers.is_empty() {
                    "-".into()
                } else {
                    providers.join(",")
                },
                format!("{}/{}", gib(s.ram_free_bytes), gib(s.ram_total_bytes)),
                power_cell(&power),
                battery_cell(&power),
                energy_cell(&s),
                queue.to_string(),
                in_flight.max(w.dispatched_in_flight).to_string(),
                s.inference_address.clone(),
                if models.is_empty() {
                    "-".into()
                } else {
                    models.join(",")
                },
            ]
        })
        .collect();
    render(
        &[
            "NAME",
            "STATE",
            "PROVIDER",
            "RAM GiB (free/total)",
            "POWER",
            "BATTERY",
            "ENERGY",
            "QUEUE",
            "IN-FLIGHT",
            "ADDRESS",
            "MODELS",
        ],
        &rows,
    )
}

/// The `localml models` table.
pub fn models(list: &[ModelInfo]) -> String {
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|m| {
            let sig = m.signature.clone().unwrap_or_default();
            let fmt = |specs: &[localml_proto::localml::v1::TensorSpec]| {
                specs
                    .iter()
                    .map(|s| format!("{} {} {:?}", s.name, s.datatype, s.shape))
                    .collect::<Vec<_>>()
                    .join("; ")
            };
            vec![
                m.name.clone(),
                m.version.clone(),
                m.max_batch_size.to_string(),
                if m.ready_workers.is_empty() {
                    "-".into()
                } else {
                    m.ready_workers
                        .iter()
                        .enumerate()
                        .map(|(i, w)| match m.ready_variants.get(i).map(String::as_str) {
                            Some("") | None => w.clone(),
                            Some(variant) => format!("{w} ({variant})"),
                        })
                        .collect::<Vec<_>>()
                        .join(",")
                },
                fmt(&sig.inputs),
                fmt(&sig.outputs),
            ]
        })
        .collect();
    render(
        &[
            "MODEL",
            "VERSION",
            "MAX BATCH",
            "READY ON",
            "INPUTS",
            "OUTPUTS",
        ],
        &rows,
    )
}

/// The `localml deployments list` table.
pub fn deployments(list: &[Deployment]) -> String {
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|d| {
            let mut selector: Vec<String> =
                d.selector.iter().map(|(k, v)| format!("{k}={v}")).collect();
            selector.sort();
            vec![
                d.name.clone(),
                d.model.clone(),
                if d.version.is_empty() {
                    "newest".into()
                } else {
                    d.version.clone()
                },
                format!("{}/{}", d.ready_replicas, d.replicas),
                if selector.is_empty() {
                    "-".into()
                } else {
                    selector.join(",")
                },
                if d.workers.is_empty() {
                    "-".into()
                } else {
                    d.workers.join(",")
                },
                d.message.clone(),
            ]
        })
        .collect();
    render(
        &[
            "NAME", "MODEL", "VERSION", "READY", "SELECTOR", "WORKERS", "MESSAGE",
        ],
        &rows,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use localml_proto::localml::v1::{LoadedModel, PowerSource, WorkerState};

    #[test]
    fn aligned_columns() {
        let out = render(&["A", "BB"], &[vec!["xxx".into(), "y".into()]]);
        assert_eq!(out, "A    BB\nxxx  y");
    }

    #[test]
    fn empty_cells_keep_their_column_and_lines_have_no_trailing_blanks() {
        let out = render(
            &["ID", "TENANT", "MESSAGE"],
            &[
                vec!["a".into(), "".into(), "".into()],
                vec!["bb".into(), "t".into(), "late".into()],
            ],
        );
        assert_eq!(out, "ID  TENANT  MESSAGE\na\nbb  t       late");
        assert_eq!(render(&["A", "B"], &[]), "A  B", "header only");
    }

    #[test]
    fn worker_row_shows_power_and_battery() {
        let w = WorkerInfo {
            state: WorkerState::Ready as i32,
            status: Some(WorkerStatus {
                name: "laptop".into(),
                power: Some(PowerStatus {
                    source: PowerSource::Battery as i32,
                    battery_percent: Some(42.0),
                    origin: "sysfs".into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let out = workers(&[w]);
        let row = out.lines().nth(1).expect("row");
        assert!(row.starts_with("laptop"), "{row}");
        assert!(
            row.contains("Ready") && row.contains("battery") && row.contains("42%"),
            "{row}"
        );
    }

    #[test]
    fn energy_shows_watts_and_joules_per_inference() {
        let mut status = WorkerStatus {
            power: Some(PowerStatus {
                power_watts: Some(38.04),
                ..Default::default()
            }),
            models: vec![
                LoadedModel {
                    joules_per_inference: 0.01,
                    inference_count: 3,
                    ..Default::default()
                },
                LoadedModel {
                    joules_per_inference: 0.05,
                    inference_count: 1,
                    ..Default::default()
                },
                LoadedModel::default(),
            ],
            ..Default::default()
        };
        assert_eq!(energy_cell(&status), "38.0 W 0.0200 J/inf");
        status.power = Some(PowerStatus {
            power_watts: Some(12.0),
            energy_estimated: true,
            ..Default::default()
        });
        status.models.clear();
        assert_eq!(
            energy_cell(&status),
            "~12.0 W",
            "estimate, nothing served yet"
        );
        status.power = Some(PowerStatus::default());
        assert_eq!(energy_cell(&status), "-", "no counter, no watts");
    }

    #[test]
    fn a_ups_shows_with_its_status_and_runtime() {
        let ups = PowerStatus {
            source: PowerSource::Battery as i32,
            battery_percent: Some(80.0),
            ups: "myups@10.0.0.5:3493".into(),
            ups_status: "OB DISCHRG".into(),
            battery_runtime_seconds: Some(1230),
            ..Default::default()
        };
        assert_eq!(
            power_cell(&ups),
            "battery (UPS myups@10.0.0.5:3493 OB DISCHRG)"
        );
        assert_eq!(battery_cell(&ups), "80% 20m left");
        let silent = PowerStatus {
            ups_status: String::new(),
            battery_runtime_seconds: None,
            battery_percent: None,
            ..ups
        };
        assert_eq!(
            power_cell(&silent),
            "battery (UPS myups@10.0.0.5:3493 no answer)"
        );
        assert_eq!(battery_cell(&silent), "-");
    }
}
