//! The scheduler's queue: requests wait here when every feasible worker is at its
//! concurrency limit, in the order of a QueueSort (the default, [`PrioritySort`]: higher
//! `localml.priority` first; among equals the tenant with the fewest requests in flight, so
//! one heavy client cannot starve the others; then arrival). Bounded: a full queue answers
//! at once.
//!
//! [`PrioritySort`]: localml_framework::PrioritySort

use std::collections::HashMap;
use std::sync::Mutex;

use tokio::sync::oneshot;

use localml_framework::{QueueSort, QueuedRequest};

struct Waiter {
    request: QueuedRequest,
    wake: oneshot::Sender<()>,
}

#[derive(Default)]
struct Inner {
    waiting: Vec<Waiter>,
    next_sequence: u64,
    /// Dispatched and not yet answered, per tenant.
    in_flight: HashMap<String, u32>,
}

pub struct AdmissionQueue {
    inner: Mutex<Inner>,
    capacity: usize,
    sort: Box<dyn QueueSort>,
}

/// The queue is full.
#[derive(Debug, PartialEq)]
pub struct QueueFull(pub usize);

impl AdmissionQueue {
    pub fn new(capacity: usize, sort: Box<dyn QueueSort>) -> AdmissionQueue {
        AdmissionQueue {
            inner: Mutex::new(Inner::default()),
            capacity,
            sort,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A sequence number for a new arrival (its place among equals).
    pub fn arrive(&self) -> u64 {
        let mut inner = self.lock();
        inner.next_sequence += 1;
        inner.next_sequence
    }

    /// Whether anyone waits (new arrivals then queue behind them).
    pub fn is_empty(&self) -> bool {
        self.lock().waiting.iter().all(|w| w.wake.is_closed())
    }

    pub fn len(&self) -> usize {
        self.lock()
            .waiting
            .iter()
            .filter(|w| !w.wake.is_closed())
            .count()
    }

    /// Waits for a turn; the receiver fires when this request is at the head and
    /// capacity may have freed.
    pub fn enqueue(&self, request: QueuedRequest) -> Result<oneshot::Receiver<()>, QueueFull> {
        let mut inner = self.lock();
        inner.waiting.retain(|w| !w.wake.is_closed());
        if inner.waiting.len() >= self.capacity {
            return Err(QueueFull(self.capacity));
        }
        let (wake, rx) = oneshot::channel();
        inner.waiting.push(Waiter { request, wake });
        Ok(rx)
    }

    /// Wakes the first waiter in QueueSort order (called when capacity frees).
    pub fn wake_next(&self) {
        let mut inner = self.lock();
        inner.waiting.retain(|w| !w.wake.is_closed());
        let Some(best) = head(&inner, self.sort.as_ref()) else {
            return;
        };
        let waiter = inner.waiting.swap_remove(best);
        let _ = waiter.wake.send(());
    }

    /// Wakes everyone (cluster state changed: a worker joined or reported).
    pub fn wake_all(&self) {
        let mut inner = self.lock();
        for w in inner.waiting.drain(..) {
            let _ = w.wake.send(());
        }
    }

    pub fn started(&self, tenant: &str) {
        let mut inner = self.lock();
        *inner.in_flight.entry(tenant.to_string()).or_default() += 1;
    }

    pub fn finished(&self, tenant: &str) {
        {
            let mut inner = self.lock();
            // A tenant with nothing in flight is forgotten: the map holds only tenants
            // with requests now, however many names clients have used.
            if let Some(n) = inner.in_flight.get_mut(tenant) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    inner.in_flight.remove(tenant);
                }
            }
        }
        self.wake_next();
    }
}

/// Index of the waiter to serve next, by the QueueSort.
fn head(inner: &Inner, sort: &dyn QueueSort) -> Option<usize> {
    let with_load = |w: &Waiter| QueuedRequest {
        tenant_in_flight: inner.in_flight.get(&w.request.tenant).copied().unwrap_or(0),
        ..w.request.clone()
    };
    let mut best: Option<(usize, QueuedRequest)> = None;
    for (i, w) in inner.waiting.iter().enumerate() {
        let candidate = with_load(w);
        if best.as_ref().is_none_or(|(_, b)| sort.less(&candidate, b)) {
            best = Some((i, candidate));
        }
    }
    best.map(|(i, _)| i)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(priority: i64, sequence: u64, tenant: &str) -> QueuedRequest {
        QueuedRequest {
            priority,
            sequence,
            tenant: tenant.into(),
            tenant_in_flight: 0,
        }
    }

    fn queue(capacity: usize) -> AdmissionQueue {
        AdmissionQueue::new(capacity, Box::new(localml_framework::PrioritySort))
    }

    #[test]
    fn tenants_with_nothing_in_flight_are_forgotten() {
        let q = queue(4);
        for i in 0..1000 {
            let tenant = format!("invented-{i}");
            q.started(&tenant);
            q.started(&tenant);
            q.finished(&tenant);
            q.finished(&tenant);
        }
        q.started("busy");
        assert_eq!(
            q.lock().in_flight.len(),
            1,
            "only the tenant with a request now"
        );
    }

    /// Wakes one at a time and returns the order of the waiters' sequence numbers.
    fn order(q: &AdmissionQueue, mut rxs: Vec<(u64, oneshot::Receiver<()>)>) -> Vec<u64> {
        let mut out = Vec::new();
        while !rxs.is_empty() {
            q.wake_next();
            let pos = rxs
                .iter_mut()
                .position(|(_, rx)| rx.try_recv().is_ok())
                .expect("one woke");
            out.push(rxs.remove(pos).0);
        }
        out
    }

    #[test]
    fn priority_then_arrival() {
        let q = queue(10);
        let rxs = [(1, 0, "a"), (2, 5, "a"), (3, 0, "a"), (4, 5, "a")]
            .into_iter()
            .map(|(seq, prio, t)| (seq, q.enqueue(req(prio, seq, t)).expect("room")))
            .collect();
        assert_eq!(order(&q, rxs), vec![2, 4, 1, 3]);
    }

    #[test]
    fn the_tenant_with_less_in_flight_goes_first() {
        let q = queue(10);
        for _ in 0..5 {
            q.started("heavy");
        }
        q.started("light");
        let rxs = [(1, "heavy"), (2, "heavy"), (3, "light")]
            .into_iter()
            .map(|(seq, t)| (seq, q.enqueue(req(0, seq, t)).expect("room")))
            .collect();
        assert_eq!(order(&q, rxs), vec![3, 1, 2]);
    }

    #[test]
    fn bounded_and_abandoned_waiters_are_dropped() {
        let q = queue(2);
        let a = q.enqueue(req(0, 1, "t")).expect("room");
        let _b = q.enqueue(req(0, 2, "t")).expect("room");
        assert_eq!(q.enqueue(req(0, 3, "t")).err(), Some(QueueFull(2)));
        drop(a); // its client gave up (deadline)
        assert_eq!(q.len(), 1);
        assert!(q.enqueue(req(0, 4, "t")).is_ok());
    }
}
