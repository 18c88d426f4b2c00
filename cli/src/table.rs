//! Plain-text tables for operators.

use localml_proto::localml::v1::{Deployment, ModelInfo, PowerSource, WorkerInfo, WorkerState};

fn gib(bytes: u64) -> String {
    format!("{:.1}", bytes as f64 / (1024.0 * 1024.0 * 1024.0))
}

/// Renders rows with left-aligned columns separated by two spaces.
pub fn render(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, &w)| format!("{c}{}", " ".repeat(w - c.chars().count())))
            .collect();
        padded.join("  ").trim_end().to_string()
    };
    let mut out = vec![line(header.iter().map(|h| h.to_string()).collect())];
    out.extend(rows.iter().map(|r| line(r.clone())));
    out.join("\n")
}

fn state_name(state: i32) -> &'static str {
    match WorkerState::try_from(state) {
        Ok(WorkerState::Ready) => "Ready",
        Ok(WorkerState::NotReady) => "NotReady",
        Ok(WorkerState::Draining) => "Draining",
        _ => "Unknown",
    }
}

fn power_name(source: i32) -> &'static str {
    match PowerSource::try_from(source) {
        Ok(PowerSource::Mains) => "mains",
        Ok(PowerSource::Battery) => "battery",
        Ok(PowerSource::Ups) => "ups",
        _ => "unknown",
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
                std::iter::once(state_name(w.state).to_string())
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
                power_name(power.source).to_string(),
                power
                    .battery_percent
                    .map(|p| format!("{p:.0}%"))
                    .unwrap_or_else(|| "-".into()),
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
                    m.ready_workers.join(",")
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
    use localml_proto::localml::v1::{PowerStatus, WorkerStatus};

    #[test]
    fn aligned_columns() {
        let out = render(&["A", "BB"], &[vec!["xxx".into(), "y".into()]]);
        assert_eq!(out, "A    BB\nxxx  y");
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
}
