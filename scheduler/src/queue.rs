//! The scheduler's queue: requests wait here when every feasible worker is at its
//! concurrency limit, in the order of a QueueSort (the default, [`PrioritySort`]: higher
//! `localml.priority` first; among equals the tenant with the fewest requests in flight, so
//! one heavy client cannot starve the others; then arrival). Bounded: a full queue answers
//! at once.
//!
//! Event-driven, no polling: a request that ends wakes the first waiter for its model (the
//! slot it freed; the first of all when none waits for that model); a waiter that then
//! dispatches wakes the next for its model, until one finds every worker busy again; a
//! worker's report or join wakes the first waiter of each model. An event between a
//! request's look at the workers and its queueing makes it look again
//! ([`Turn::LookAgain`]), so none is lost.
//!
//! [`PrioritySort`]: localml_framework::PrioritySort

use std::collections::HashMap;
use std::sync::Mutex;

use tokio::sync::oneshot;

use localml_framework::{QueueSort, QueuedRequest};

struct Waiter {
    request: QueuedRequest,
    /// The model it waits to run: a slot freed by that model goes to it first.
    model: String,
    wake: oneshot::Sender<()>,
}

#[derive(Default)]
struct Inner {
    waiting: Vec<Waiter>,
    next_sequence: u64,
    /// Dispatched and not yet answered, per tenant.
    in_flight: HashMap<String, u32>,
    /// Counts the events that may free capacity (a request ended, a worker reported or
    /// joined), so a request that found every worker busy and then queues knows whether
    /// one happened in between (it then looks again instead of waiting for the next).
    events: u64,
}

/// Where an arrival that found every worker busy stands.
#[derive(Debug)]
pub enum Turn {
    /// Queued: the receiver fires when the request is at the head for its model and
    /// capacity may have freed.
    Wait(oneshot::Receiver<()>),
    /// Capacity may have freed since the request looked: look again now.
    LookAgain,
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

    /// The events seen so far; pass it to [`AdmissionQueue::enqueue`] after looking for
    /// a free worker.
    pub fn events(&self) -> u64 {
        self.lock().events
    }

    /// Queues a request for `model` that found every worker busy when the event count
    /// was `seen`; when an event came since, it looks again instead
    /// ([`Turn::LookAgain`]): no wake-up is lost between looking and queueing.
    pub fn enqueue(
        &self,
        request: QueuedRequest,
        model: &str,
        seen: u64,
    ) -> Result<Turn, QueueFull> {
        let mut inner = self.lock();
        inner.waiting.retain(|w| !w.wake.is_closed());
        if inner.waiting.len() >= self.capacity {
            return Err(QueueFull(self.capacity));
        }
        if inner.events != seen {
            return Ok(Turn::LookAgain);
        }
        let (wake, rx) = oneshot::channel();
        inner.waiting.push(Waiter {
            request,
            model: model.to_string(),
            wake,
        });
        Ok(Turn::Wait(rx))
    }

    /// Wakes the first waiter for `model` in QueueSort order, or when none waits for it
    /// the first of all (capacity on a worker is shared by its models). False when
    /// nobody waits.
    fn wake_head(inner: &mut Inner, sort: &dyn QueueSort, model: Option<&str>) -> bool {
        loop {
            let best = model
                .and_then(|m| head(inner, sort, |w| w.model == m))
                .or_else(|| head(inner, sort, |_| true));
            let Some(best) = best else {
                return false;
            };
            let waiter = inner.waiting.swap_remove(best);
            // A waiter whose caller gave up meanwhile passes its turn on.
            if waiter.wake.send(()).is_ok() {
                return true;
            }
        }
    }

    /// A request that waited was dispatched: the next waiter for its model looks too
    /// (capacity may be left for more than one), and so on until one finds none.
    pub fn pass_on(&self, model: &str) {
        let mut inner = self.lock();
        Self::wake_head(&mut inner, self.sort.as_ref(), Some(model));
    }

    /// The cluster changed (a worker reported, joined, was uncordoned): the first waiter
    /// for each model looks again.
    pub fn changed(&self) {
        let mut inner = self.lock();
        inner.events += 1;
        inner.waiting.retain(|w| !w.wake.is_closed());
        let mut models: Vec<String> = inner.waiting.iter().map(|w| w.model.clone()).collect();
        models.sort();
        models.dedup();
        for model in models {
            if let Some(best) = head(&inner, self.sort.as_ref(), |w| w.model == model) {
                let waiter = inner.waiting.swap_remove(best);
                let _ = waiter.wake.send(());
            }
        }
    }

    pub fn started(&self, tenant: &str) {
        let mut inner = self.lock();
        *inner.in_flight.entry(tenant.to_string()).or_default() += 1;
    }

    /// A request for `model` ended: its slot goes to the first waiter for that model (or,
    /// when none waits for it, to the first of all).
    pub fn finished(&self, tenant: &str, model: &str) {
        let mut inner = self.lock();
        inner.events += 1;
        // A tenant with nothing in flight is forgotten: the map holds only tenants with
        // requests now, however many names clients have used.
        if let Some(n) = inner.in_flight.get_mut(tenant) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                inner.in_flight.remove(tenant);
            }
        }
        Self::wake_head(&mut inner, self.sort.as_ref(), Some(model));
    }
}

/// Index of the waiter to serve next among those `eligible`, by the QueueSort.
fn head(inner: &Inner, sort: &dyn QueueSort, eligible: impl Fn(&Waiter) -> bool) -> Option<usize> {
    let with_load = |w: &Waiter| QueuedRequest {
        tenant_in_flight: inner.in_flight.get(&w.request.tenant).copied().unwrap_or(0),
        ..w.request.clone()
    };
    let mut best: Option<(usize, QueuedRequest)> = None;
    for (i, w) in inner
        .waiting
        .iter()
        .enumerate()
        .filter(|(_, w)| eligible(w))
    {
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
            q.finished(&tenant, "m");
            q.finished(&tenant, "m");
        }
        q.started("busy");
        assert_eq!(
            q.lock().in_flight.len(),
            1,
            "only the tenant with a request now"
        );
    }

    fn wait(q: &AdmissionQueue, request: QueuedRequest, model: &str) -> oneshot::Receiver<()> {
        match q.enqueue(request, model, q.events()).expect("room") {
            Turn::Wait(rx) => rx,
            Turn::LookAgain => panic!("no event came in between"),
        }
    }

    /// Wakes one at a time and returns the order of the waiters' sequence numbers.
    fn order(q: &AdmissionQueue, mut rxs: Vec<(u64, oneshot::Receiver<()>)>) -> Vec<u64> {
        let mut out = Vec::new();
        while !rxs.is_empty() {
            q.pass_on("m");
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
            .map(|(seq, prio, t)| (seq, wait(&q, req(prio, seq, t), "m")))
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
            .map(|(seq, t)| (seq, wait(&q, req(0, seq, t), "m")))
            .collect();
        assert_eq!(order(&q, rxs), vec![3, 1, 2]);
    }

    #[test]
    fn bounded_and_abandoned_waiters_are_dropped() {
        let q = queue(2);
        let a = wait(&q, req(0, 1, "t"), "m");
        let _b = wait(&q, req(0, 2, "t"), "m");
        assert_eq!(
            q.enqueue(req(0, 3, "t"), "m", q.events()).err(),
            Some(QueueFull(2))
        );
        drop(a); // its client gave up (deadline)
        assert_eq!(q.len(), 1);
        assert!(q.enqueue(req(0, 4, "t"), "m", q.events()).is_ok());
    }

    #[test]
    fn a_freed_slot_goes_to_the_first_waiter_for_its_model() {
        let q = queue(10);
        q.started("t");
        q.started("t");
        let mut a = wait(&q, req(9, 1, "t"), "a");
        let mut b1 = wait(&q, req(0, 2, "t"), "b");
        let mut b2 = wait(&q, req(5, 3, "t"), "b");
        // A request for b ended: b's first waiter (priority 5) looks, not a's (priority 9).
        q.finished("t", "b");
        assert!(b2.try_recv().is_ok());
        assert!(a.try_recv().is_err() && b1.try_recv().is_err());
        // It was dispatched: the next for b looks too.
        q.pass_on("b");
        assert!(b1.try_recv().is_ok());
        assert!(a.try_recv().is_err());
        // Nobody waits for c: the first of all looks.
        q.finished("t", "c");
        assert!(a.try_recv().is_ok());
    }

    #[test]
    fn a_waiter_whose_caller_left_passes_its_turn_on() {
        let q = queue(10);
        let gone = wait(&q, req(5, 1, "t"), "m");
        let mut next = wait(&q, req(0, 2, "t"), "m");
        drop(gone);
        q.finished("t", "m");
        assert!(next.try_recv().is_ok());
    }

    #[test]
    fn a_report_wakes_the_first_waiter_of_each_model() {
        let q = queue(10);
        let mut a1 = wait(&q, req(0, 1, "t"), "a");
        let mut a2 = wait(&q, req(0, 2, "t"), "a");
        let mut b = wait(&q, req(0, 3, "t"), "b");
        q.changed();
        assert!(a1.try_recv().is_ok() && b.try_recv().is_ok());
        assert!(a2.try_recv().is_err());
    }

    #[test]
    fn an_event_between_looking_and_queueing_is_not_lost() {
        let q = queue(10);
        let seen = q.events();
        // Every worker was busy when the request looked; then a request ended.
        q.finished("t", "m");
        assert!(matches!(
            q.enqueue(req(0, 1, "t"), "m", seen),
            Ok(Turn::LookAgain)
        ));
        let seen = q.events();
        q.changed();
        assert!(matches!(
            q.enqueue(req(0, 1, "t"), "m", seen),
            Ok(Turn::LookAgain)
        ));
        assert!(matches!(
            q.enqueue(req(0, 1, "t"), "m", q.events()),
            Ok(Turn::Wait(_))
        ));
    }
}
