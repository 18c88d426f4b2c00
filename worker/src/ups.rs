//! A UPS through NUT (Network UPS Tools), the standard on Linux: the worker asks `upsd`
//! for `ups.status`, `battery.charge` and `battery.runtime` over NUT's network protocol
//! (the `rups` client) and reports what they mean for scheduling. A UPS whose upsd does
//! not answer, or answers nonsense, counts as on battery: the PC's power is not known to
//! be safe.

use std::net::SocketAddr;
use std::time::Duration;

use crate::power::PowerSource;

/// NUT's default port.
pub const DEFAULT_PORT: u16 = 3493;

/// How long one reading (connect, three variables) may take before upsd counts as not
/// answering.
pub const READ_TIMEOUT: Duration = Duration::from_secs(2);

/// `NAME@HOST[:PORT]`, as `upsc` takes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpsTarget {
    pub name: String,
    pub host: String,
    pub port: u16,
}

/// A `--ups` value that is not `NAME@HOST[:PORT]`.
#[derive(Debug, thiserror::Error)]
#[error(
    "invalid UPS '{0}': expected NAME@HOST[:PORT], e.g. myups@192.168.1.10 or myups@[::1]:3493"
)]
pub struct InvalidTarget(String);

impl std::str::FromStr for UpsTarget {
    type Err = InvalidTarget;
    fn from_str(text: &str) -> Result<UpsTarget, InvalidTarget> {
        let invalid = || InvalidTarget(text.to_string());
        let (name, address) = text.split_once('@').ok_or_else(invalid)?;
        let name_ok = !name.is_empty()
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        if !name_ok {
            return Err(invalid());
        }
        // [v6]:port, [v6], host:port, host.
        let (host, port) = if let Some(rest) = address.strip_prefix('[') {
            let (host, after) = rest.split_once(']').ok_or_else(invalid)?;
            match after.strip_prefix(':') {
                Some(port) => (host, Some(port)),
                None if after.is_empty() => (host, None),
                None => return Err(invalid()),
            }
        } else {
            match address.split_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (address, None),
            }
        };
        if host.is_empty() || host.contains(|c: char| c.is_whitespace()) {
            return Err(invalid());
        }
        let port = match port {
            Some(p) => p.parse().ok().filter(|p| *p != 0).ok_or_else(invalid)?,
            None => DEFAULT_PORT,
        };
        Ok(UpsTarget {
            name: name.to_string(),
            host: host.to_string(),
            port,
        })
    }
}

impl std::fmt::Display for UpsTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.host.contains(':') {
            write!(f, "{}@[{}]:{}", self.name, self.host, self.port)
        } else {
            write!(f, "{}@{}:{}", self.name, self.host, self.port)
        }
    }
}

/// What a UPS reading means for the worker.
#[derive(Debug, Clone, PartialEq)]
pub struct UpsPower {
    pub source: PowerSource,
    /// `battery.charge`, when it is a plausible percentage.
    pub battery_percent: Option<f32>,
    /// `battery.runtime`, when it is a plausible number of seconds.
    pub runtime_seconds: Option<u32>,
    /// `ups.status` as upsd said it (e.g. `OB DISCHRG`); empty when it did not answer.
    pub status: String,
    /// LB: the UPS is about to give out; the worker takes no new work.
    pub low_battery: bool,
    /// Why the reading is not a plain one (upsd silent, a value out of range); empty
    /// otherwise.
    pub reason: String,
}

impl UpsPower {
    /// The reading when upsd cannot be asked: on battery, with the reason.
    pub fn unreachable(target: &UpsTarget, why: &str) -> UpsPower {
        UpsPower {
            source: PowerSource::Battery,
            battery_percent: None,
            runtime_seconds: None,
            status: String::new(),
            low_battery: false,
            reason: format!("UPS {target} cannot be read ({why}); counted as on battery"),
        }
    }
}

/// Interprets upsd's answers. `status` is `ups.status` (space-separated flags: OL on line,
/// OB on battery, LB low battery, ...); `charge` and `runtime` are the raw values, absent
/// when the UPS does not report them. Values out of range are dropped with a reason.
pub fn interpret(status: &str, charge: Option<&str>, runtime: Option<&str>) -> UpsPower {
    // What upsd sends is shown to operators and sent in every report: bounded, printable.
    let status = printable(status);
    let (charge, runtime) = (charge.map(printable), runtime.map(printable));
    let (charge, runtime) = (charge.as_deref(), runtime.as_deref());
    let flags: Vec<&str> = status.split_whitespace().collect();
    let has = |flag: &str| flags.contains(&flag);
    let mut reasons = Vec::new();
    // NUT's own rule (upsmon): critical is on battery with low battery, or a forced
    // shutdown; LB while on line is not.
    let critical = (has("OB") && has("LB")) || has("FSD");
    let source = if has("OB") || has("FSD") {
        PowerSource::Battery
    } else if has("OL") {
        PowerSource::Mains
    } else {
        reasons.push(format!(
            "ups.status '{status}' says neither OL nor OB; counted as on battery"
        ));
        PowerSource::Battery
    };
    let battery_percent = charge.and_then(|c| match c.trim().parse::<f32>() {
        Ok(p) if (0.0..=100.0).contains(&p) => Some(p),
        _ => {
            reasons.push(format!("battery.charge '{c}' is not a percentage; ignored"));
            None
        }
    });
    let runtime_seconds = runtime.and_then(|r| match r.trim().parse::<f64>() {
        Ok(s) if s.is_finite() && s >= 0.0 && s <= f64::from(u32::MAX) => Some(s as u32),
        _ => {
            reasons.push(format!("battery.runtime '{r}' is not a duration; ignored"));
            None
        }
    });
    UpsPower {
        source,
        battery_percent,
        runtime_seconds,
        status: status.trim().to_string(),
        low_battery: critical,
        reason: reasons.join("; "),
    }
}

/// At most this many characters of any value upsd sends are kept.
const MAX_VALUE_CHARS: usize = 64;

/// `text` without control characters, at most [`MAX_VALUE_CHARS`] long.
fn printable(text: &str) -> String {
    text.chars()
        .filter(|c| !c.is_control())
        .take(MAX_VALUE_CHARS)
        .collect()
}

/// Asks upsd once, within [`READ_TIMEOUT`].
pub async fn read(target: &UpsTarget) -> UpsPower {
    use futures::FutureExt;
    // rups panics on some malformed answers (a variable named differently from the one
    // asked for, with a value it cannot parse); a upsd must not take the worker down.
    let asked = std::panic::AssertUnwindSafe(tokio::time::timeout(READ_TIMEOUT, ask(target)));
    match asked.catch_unwind().await {
        Ok(Ok(Ok(power))) => power,
        Ok(Ok(Err(why))) => UpsPower::unreachable(target, &why),
        Ok(Err(_)) => UpsPower::unreachable(target, "no answer within 2 s"),
        Err(_) => UpsPower::unreachable(target, "an answer the NUT client cannot read"),
    }
}

async fn ask(target: &UpsTarget) -> Result<UpsPower, String> {
    let address: SocketAddr = tokio::net::lookup_host((target.host.as_str(), target.port))
        .await
        .map_err(|e| format!("cannot resolve {}: {e}", target.host))?
        .next()
        .ok_or_else(|| format!("{} has no address", target.host))?;
    let config = rups::ConfigBuilder::new()
        .with_host(rups::Host::from(address))
        .with_timeout(READ_TIMEOUT)
        .build();
    let mut connection = rups::tokio::Connection::new(&config)
        .await
        .map_err(|e| e.to_string())?;
    let mut get = async |variable: &str| -> Result<Option<String>, String> {
        match connection.get_var(&target.name, variable).await {
            Ok(v) => Ok(Some(v.value())),
            // The UPS does not report this variable: fine for charge and runtime. (rups
            // passes upsd's VAR-NOT-SUPPORTED on as a generic error with that text.)
            Err(rups::ClientError::Nut(rups::NutError::VarNotSupported)) => Ok(None),
            Err(e) if e.to_string().contains("VAR-NOT-SUPPORTED") => Ok(None),
            Err(e) => Err(e.to_string().trim().to_string()),
        }
    };
    let status = get("ups.status")
        .await?
        .ok_or_else(|| "it reports no ups.status".to_string())?;
    let charge = get("battery.charge").await?;
    let runtime = get("battery.runtime").await?;
    let _ = connection.close().await;
    Ok(interpret(&status, charge.as_deref(), runtime.as_deref()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse_like_upsc() {
        let t: UpsTarget = "myups@192.168.1.10".parse().expect("plain");
        assert_eq!(
            (t.name.as_str(), t.host.as_str(), t.port),
            ("myups", "192.168.1.10", 3493)
        );
        let t: UpsTarget = "ups-1@localhost:13493".parse().expect("port");
        assert_eq!((t.host.as_str(), t.port), ("localhost", 13493));
        let t: UpsTarget = "u@[::1]:4000".parse().expect("v6");
        assert_eq!((t.host.as_str(), t.port), ("::1", 4000));
        assert_eq!(t.to_string(), "u@[::1]:4000");
        for bad in [
            "",
            "nohost@",
            "@host",
            "a b@host",
            "ups@host:0",
            "ups@host:x",
            "ups@[::1",
            "ups",
        ] {
            assert!(bad.parse::<UpsTarget>().is_err(), "{bad}");
        }
    }

    #[test]
    fn statuses_map_to_power_sources() {
        let on_line = interpret("OL CHRG", Some("100"), Some("3600"));
        assert_eq!(on_line.source, PowerSource::Mains);
        assert_eq!(
            (on_line.battery_percent, on_line.runtime_seconds),
            (Some(100.0), Some(3600))
        );
        assert!(!on_line.low_battery && on_line.reason.is_empty());
        let on_battery = interpret("OB DISCHRG", Some("55"), None);
        assert_eq!(on_battery.source, PowerSource::Battery);
        assert_eq!(on_battery.runtime_seconds, None);
        let low = interpret("OB LB", Some("9"), Some("120"));
        assert!(low.low_battery && low.source == PowerSource::Battery);
        // LB on line is not critical (NUT's rule); a forced shutdown is.
        let on_line_low = interpret("OL LB", Some("9"), None);
        assert!(!on_line_low.low_battery && on_line_low.source == PowerSource::Mains);
        assert!(interpret("FSD OL", None, None).low_battery);
    }

    #[test]
    fn nonsense_is_never_mains_and_never_a_crash() {
        let odd = interpret("WHAT", Some("250"), Some("-5"));
        assert_eq!(odd.source, PowerSource::Battery);
        assert_eq!((odd.battery_percent, odd.runtime_seconds), (None, None));
        for part in [
            "ups.status 'WHAT'",
            "battery.charge '250'",
            "battery.runtime '-5'",
        ] {
            assert!(odd.reason.contains(part), "{}", odd.reason);
        }
        let long = interpret(&format!("OB\u{1b}[31m{}", "X".repeat(10_000)), None, None);
        assert!(long.status.chars().count() <= 64 && !long.status.contains('\u{1b}'));
        let empty = interpret("", Some("NaN"), Some("inf"));
        assert_eq!(empty.source, PowerSource::Battery);
        assert_eq!((empty.battery_percent, empty.runtime_seconds), (None, None));
    }

    #[tokio::test]
    async fn a_silent_upsd_counts_as_battery() {
        // A port nothing listens on.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        drop(listener);
        let target = UpsTarget {
            name: "ups".into(),
            host: "127.0.0.1".into(),
            port,
        };
        let power = read(&target).await;
        assert_eq!(power.source, PowerSource::Battery);
        assert!(power.reason.contains("cannot be read"), "{}", power.reason);
    }
}
