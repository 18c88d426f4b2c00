//! The simulated workers' power draw and batteries, and the meter that adds up energy.
//!
//! A worker draws its idle watts whenever it is up and its busy watts while it serves a
//! request (one at a time). The energy of one inference is the marginal one, busy minus
//! idle watts times the service time: what the real worker reports as joules per
//! inference (energy drawn above idle, attributed to inferences). A
//! battery supplies the whole draw, idle included, while its worker is on battery; it
//! does not recharge on mains within a run, and an empty battery stays at 0 (the fleets
//! in [`crate::fleet`] are sized so that none empties).

/// A worker's power draw, in watts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Watts {
    pub idle: f64,
    pub busy: f64,
}

impl Watts {
    /// Joules one inference costs above idle, for a service time in milliseconds.
    pub fn joules_per_inference(&self, service_ms: f64) -> f64 {
        (self.busy - self.idle).max(0.0) * service_ms / 1000.0
    }
}

/// A battery, in joules (1 Wh = 3,600 J).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Battery {
    pub capacity_j: f64,
    /// Charge at the start of the run.
    pub charge_j: f64,
}

/// One worker's energy so far, advanced from event to event by [`Meter::settle`].
#[derive(Debug, Clone)]
pub struct Meter {
    watts: Watts,
    /// Capacity and charge now, if the worker has a battery.
    battery: Option<Battery>,
    settled_ms: f64,
    busy: bool,
    on_battery: bool,
    off: bool,
    /// Everything drawn, idle and busy, in joules.
    pub total_j: f64,
    /// Drawn above idle: the inferences' share.
    pub above_idle_j: f64,
    /// Drawn from the battery.
    pub battery_j: f64,
}

impl Meter {
    pub fn new(watts: Watts, battery: Option<Battery>) -> Meter {
        Meter {
            watts,
            battery,
            settled_ms: 0.0,
            busy: false,
            on_battery: false,
            off: false,
            total_j: 0.0,
            above_idle_j: 0.0,
            battery_j: 0.0,
        }
    }

    fn draw_watts(&self) -> f64 {
        match (self.off, self.busy) {
            (true, _) => 0.0,
            (false, true) => self.watts.busy,
            (false, false) => self.watts.idle,
        }
    }

    /// Adds the energy drawn since the last call, at the draw that held since then. Call
    /// it before any change of what the worker draws or where the draw comes from.
    pub fn settle(&mut self, now_ms: f64) {
        let seconds = (now_ms - self.settled_ms).max(0.0) / 1000.0;
        self.settled_ms = self.settled_ms.max(now_ms);
        let joules = self.draw_watts() * seconds;
        self.total_j += joules;
        if self.busy && !self.off {
            self.above_idle_j += (self.watts.busy - self.watts.idle).max(0.0) * seconds;
        }
        if self.on_battery {
            if let Some(b) = &mut self.battery {
                let drawn = joules.min(b.charge_j);
                b.charge_j -= drawn;
                self.battery_j += drawn;
            }
        }
    }

    /// The worker starts (true) or stops serving at `now_ms`.
    pub fn set_busy(&mut self, now_ms: f64, busy: bool) {
        self.settle(now_ms);
        self.busy = busy;
    }

    /// The worker's power comes from its battery (true) or not from `now_ms` on.
    pub fn set_on_battery(&mut self, now_ms: f64, on_battery: bool) {
        self.settle(now_ms);
        self.on_battery = on_battery;
    }

    /// The worker is switched off (it failed): it draws nothing from `now_ms` on.
    pub fn switch_off(&mut self, now_ms: f64) {
        self.settle(now_ms);
        self.off = true;
    }

    /// The battery's charge at `now_ms` in percent, as the worker would report it; None
    /// without a battery. Does not settle: the draw since the last settle is estimated
    /// at the current rate.
    pub fn battery_percent(&self, now_ms: f64) -> Option<f32> {
        let b = self.battery?;
        let pending = if self.on_battery {
            self.draw_watts() * (now_ms - self.settled_ms).max(0.0) / 1000.0
        } else {
            0.0
        };
        let charge = (b.charge_j - pending).max(0.0);
        Some((100.0 * charge / b.capacity_j.max(f64::MIN_POSITIVE)) as f32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DESK: Watts = Watts {
        idle: 10.0,
        busy: 30.0,
    };

    #[test]
    fn busy_half_of_ten_seconds_draws_idle_plus_the_margin() {
        let mut m = Meter::new(DESK, None);
        m.set_busy(2_000.0, true);
        m.set_busy(7_000.0, false);
        m.settle(10_000.0);
        // 10 W for 10 s + 20 W more for 5 s.
        assert!((m.total_j - 200.0).abs() < 1e-9, "{}", m.total_j);
        assert!((m.above_idle_j - 100.0).abs() < 1e-9, "{}", m.above_idle_j);
        assert_eq!(m.battery_j, 0.0, "no battery, nothing drawn from one");
        assert_eq!(m.battery_percent(10_000.0), None);
    }

    #[test]
    fn joules_per_inference_is_the_margin_over_the_service_time() {
        assert!((DESK.joules_per_inference(50.0) - 1.0).abs() < 1e-12);
        let odd = Watts {
            idle: 30.0,
            busy: 20.0,
        };
        assert_eq!(odd.joules_per_inference(50.0), 0.0, "never negative");
    }

    #[test]
    fn a_battery_drains_only_while_on_battery_and_its_percent_falls() {
        // 1,000 J at 50 %: 500 J left.
        let battery = Battery {
            capacity_j: 1_000.0,
            charge_j: 500.0,
        };
        let mut m = Meter::new(DESK, Some(battery));
        m.settle(5_000.0);
        assert_eq!(m.battery_percent(5_000.0), Some(50.0), "mains: no drain");
        m.set_on_battery(5_000.0, true);
        // 10 s idle on battery: 100 J; the report counts the draw not yet settled.
        assert_eq!(m.battery_percent(15_000.0), Some(40.0));
        m.set_busy(15_000.0, true);
        // 5 s busy: 150 J more.
        m.set_on_battery(20_000.0, false);
        assert!((m.battery_j - 250.0).abs() < 1e-9, "{}", m.battery_j);
        assert_eq!(m.battery_percent(30_000.0), Some(25.0), "back on mains");
        assert!((m.total_j - (50.0 + 100.0 + 150.0)).abs() < 1e-9);
    }

    #[test]
    fn an_empty_battery_gives_no_more_than_it_held() {
        let mut m = Meter::new(
            DESK,
            Some(Battery {
                capacity_j: 100.0,
                charge_j: 20.0,
            }),
        );
        m.set_on_battery(0.0, true);
        m.settle(10_000.0);
        assert_eq!(m.battery_j, 20.0);
        assert_eq!(m.battery_percent(20_000.0), Some(0.0));
    }

    #[test]
    fn a_worker_switched_off_draws_nothing() {
        let mut m = Meter::new(DESK, None);
        m.set_busy(0.0, true);
        m.switch_off(1_000.0);
        m.settle(10_000.0);
        assert!((m.total_j - 30.0).abs() < 1e-9);
        assert!((m.above_idle_j - 20.0).abs() < 1e-9);
    }
}
