//! The scheduler's queue: requests wait here when every feasible worker is at its
//! concurrency limit, in the order of a QueueSort (the default, [`PrioritySort`]: higher
//! `localml.priority` first; among equals the tenant with the fewest requests in flight, so
//! one heavy client cannot starve the others; then arrival). Bounded: a full queue answers
//! at once.
//!
//! Event-driven (docs/scheduling.md, "The queue"). Requests are grouped in classes
//! ([`class`]: model, version, profile and constraints). A request that ends wakes the
//! first waiter of its class (the first of all when none waits); a woken request that is
//! dispatched or gives up wakes the next of its class (another class's when its own has
//! none); one that finds every worker busy again goes back to its place and wakes the
//! first waiter of another class that has not looked since the last event, each class
//! looking once per event. A change of the workers wakes the first waiter of each class.
//! An event between a request's look at the workers and its queueing makes it look again
//! ([`Turn::LookAgain`]). A woken request that goes back is never refused for a full
//! queue. The dispatcher adds a safety net (`queue_safety_net_ms`).

use std::collections::HashMap;
use std::sync::Mutex;

use tokio::sync::oneshot;

use localml_framework::{QueueSort, QueuedRequest};

struct Waiter {
    request: QueuedRequest,
    /// What it waits to run ([`class`]): requests of one class can use the same workers,
    /// so a slot freed by one goes to the first waiter of its class.
    class: String,
    wake: oneshot::Sender<()>,
}

/// How a request queues ([`AdmissionQueue::enqueue`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Queueing {
    /// It looked at the workers and found them busy: it queues unless an event came
    /// since (then it looks again); refused when the queue is full.
    Busy,
    /// An arrival behind waiters of its class: it queues without looking while one of
    /// them is still listed (else it looks now); refused when the queue is full.
    Behind,
    /// A woken request that found the workers busy again: as `Busy`, but it was admitted
    /// before and is never refused for a full queue.
    Again,
}

/// The class of a request: what decides which workers can serve it (profile, model,
/// version asked for, provider, selector, power constraints). Requests of one class see
/// the same workers as free or busy.
pub fn class(profile: &str, info: &localml_framework::RequestInfo, version: &str) -> String {
    format!(
        "{profile}\u{1}{}\u{1}{version}\u{1}{:?}\u{1}{:?}\u{1}{}\u{1}{:?}",
        info.model, info.provider, info.selector, info.mains_only, info.min_battery_percent
    )
}

#[derive(Default)]
struct Inner {
    waiting: Vec<Waiter>,
    next_sequence: u64,
    /// Dispatched and not yet answered, per tenant.
    in_flight: HashMap<String, u32>,
    /// Counts the events that may change what queued requests can run on (a request
    /// ended, a worker reported, joined, left, was cordoned...), so a request that found
    /// every worker busy and then queues knows whether one happened in between (it then
    /// looks again instead of waiting for the next).
    events: u64,
    /// Per class with waiters, the event count when one of its requests last looked (or
    /// was woken to look): a class looks once per event.
    looked: HashMap<String, u64>,
}

/// Where a request that found every worker busy stands.
#[derive(Debug)]
pub enum Turn {
    /// Queued: the receiver fires when it is its turn to look again.
    Wait(oneshot::Receiver<()>),
    /// The workers may have changed since the request looked: look again now.
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

    /// Whether requests of `class` wait (a new arrival of that class then queues behind
    /// them).
    pub fn has_waiting(&self, class: &str) -> bool {
        self.lock()
            .waiting
            .iter()
            .any(|w| w.class == class && !w.wake.is_closed())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn len(&self) -> usize {
        self.lock()
            .waiting
            .iter()
            .filter(|w| !w.wake.is_closed())
            .count()
    }

    /// The events seen so far; pass it to [`AdmissionQueue::enqueue`] after looking at
    /// the workers.
    pub fn events(&self) -> u64 {
        self.lock().events
    }

    /// Queues a request of `class` that last looked at the workers when the event count
    /// was `seen` ([`Queueing`] says how); when it should look again instead
    /// ([`Turn::LookAgain`]: an event came since, so no wake-up is lost between looking
    /// and queueing), it does not queue.
    pub fn enqueue(
        &self,
        request: QueuedRequest,
        class: &str,
        seen: u64,
        how: Queueing,
    ) -> Result<Turn, QueueFull> {
        let mut inner = self.lock();
        inner.waiting.retain(|w| !w.wake.is_closed());
        let look_again = match how {
            Queueing::Behind => !inner.waiting.iter().any(|w| w.class == class),
            Queueing::Busy | Queueing::Again => inner.events != seen,
        };
        if look_again {
            return Ok(Turn::LookAgain);
        }
        if how != Queueing::Again && inner.waiting.len() >= self.capacity {
            return Err(QueueFull(self.capacity));
        }
        if how != Queueing::Behind {
            let looked = inner.looked.entry(class.to_string()).or_insert(0);
            *looked = (*looked).max(seen);
        }
        let (wake, rx) = oneshot::channel();
        inner.waiting.push(Waiter {
            request,
            class: class.to_string(),
            wake,
        });
        Ok(Turn::Wait(rx))
    }

    /// Wakes the first waiter among those `eligible` (QueueSort order); false when none.
    fn wake_first(
        inner: &mut Inner,
        sort: &dyn QueueSort,
        eligible: impl Fn(&Waiter) -> bool,
    ) -> bool {
        loop {
            let Some(best) = head(inner, sort, &eligible) else {
                return false;
            };
            let waiter = inner.waiting.swap_remove(best);
            // A waiter whose caller gave up meanwhile passes its turn on.
            if waiter.wake.send(()).is_ok() {
                return true;
            }
        }
    }

    /// A request of `class` that waited was dispatched, or gave up after being woken:
    /// the next waiter of its class looks (capacity may be left for more than one), or,
    /// when none waits, the first of another class that has not looked since the last
    /// event.
    pub fn pass_on(&self, class: &str) {
        let mut inner = self.lock();
        if !Self::wake_first(&mut inner, self.sort.as_ref(), |w| w.class == class) {
            Self::wake_stale(&mut inner, self.sort.as_ref(), class);
        }
    }

    /// A woken request of `class` found every worker busy and queued again: the turn
    /// goes to the first waiter of another class that has not looked since the last
    /// event (the slot may suit another model, version or constraint). A class looks
    /// once per event, so the chain ends after at most one look per class.
    pub fn went_back(&self, class: &str) {
        let mut inner = self.lock();
        Self::wake_stale(&mut inner, self.sort.as_ref(), class);
    }

    /// Wakes the first waiter of a class other than `class` that has not looked since
    /// the last event, and counts that class as looking.
    fn wake_stale(inner: &mut Inner, sort: &dyn QueueSort, class: &str) -> bool {
        let events = inner.events;
        let stale: std::collections::HashSet<String> = inner
            .waiting
            .iter()
            .filter(|w| w.class != class)
            .filter(|w| inner.looked.get(&w.class).copied().unwrap_or(0) < events)
            .map(|w| w.class.clone())
            .collect();
        let Some(best) = head(inner, sort, |w| stale.contains(&w.class)) else {
            return false;
        };
        let woken = inner.waiting[best].class.clone();
        inner.looked.insert(woken.clone(), events);
        Self::wake_first(inner, sort, |w| w.class == woken)
    }

    /// What queued requests can run on changed (a worker reported, joined, left, turned
    /// NotReady, was cordoned): the first waiter of each class looks again.
    pub fn changed(&self) {
        let mut inner = self.lock();
        inner.events += 1;
        inner.waiting.retain(|w| !w.wake.is_closed());
        let mut classes: Vec<String> = inner.waiting.iter().map(|w| w.class.clone()).collect();
        classes.sort();
        classes.dedup();
        // Classes with nothing waiting are forgotten.
        inner.looked.retain(|c, _| classes.binary_search(c).is_ok());
        let events = inner.events;
        for class in classes {
            inner.looked.insert(class.clone(), events);
            Self::wake_first(&mut inner, self.sort.as_ref(), |w| w.class == class);
        }
    }

    pub fn started(&self, tenant: &str) {
        let mut inner = self.lock();
        *inner.in_flight.entry(tenant.to_string()).or_default() += 1;
    }

    /// A request of `class` ended: its slot goes to the first waiter of that class, or,
    /// when none waits, to the first of all.
    pub fn finished(&self, tenant: &str, class: &str) {
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
        let sort = self.sort.as_ref();
        if !Self::wake_first(&mut inner, sort, |w| w.class == class) {
            Self::wake_first(&mut inner, sort, |_| true);
        }
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

    fn wait(q: &AdmissionQueue, request: QueuedRequest, class: &str) -> oneshot::Receiver<()> {
        match q
            .enqueue(request, class, q.events(), Queueing::Busy)
            .expect("room")
        {
            Turn::Wait(rx) => rx,
            Turn::LookAgain => panic!("no event came in between"),
        }
    }

    /// A woken request that looked after the last event and queues again.
    fn q_wait_again(
        q: &AdmissionQueue,
        request: QueuedRequest,
        class: &str,
    ) -> oneshot::Receiver<()> {
        match q.enqueue(request, class, q.events(), Queueing::Again) {
            Ok(Turn::Wait(rx)) => rx,
            other => panic!("{other:?}"),
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
            q.enqueue(req(0, 3, "t"), "m", q.events(), Queueing::Busy)
                .err(),
            Some(QueueFull(2))
        );
        drop(a); // its client gave up (deadline)
        assert_eq!(q.len(), 1);
        assert!(q
            .enqueue(req(0, 4, "t"), "m", q.events(), Queueing::Busy)
            .is_ok());
    }

    #[test]
    fn a_freed_slot_goes_to_the_first_waiter_of_its_class() {
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
    fn a_report_wakes_the_first_waiter_of_each_class() {
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
            q.enqueue(req(0, 1, "t"), "m", seen, Queueing::Busy),
            Ok(Turn::LookAgain)
        ));
        let seen = q.events();
        q.changed();
        assert!(matches!(
            q.enqueue(req(0, 1, "t"), "m", seen, Queueing::Busy),
            Ok(Turn::LookAgain)
        ));
        assert!(matches!(
            q.enqueue(req(0, 1, "t"), "m", q.events(), Queueing::Busy),
            Ok(Turn::Wait(_))
        ));
        // An arrival behind its class queues without looking while one of them waits...
        let seen = q.events();
        q.changed();
        let _first = wait(&q, req(0, 2, "t"), "m");
        let behind = q.enqueue(req(0, 3, "t"), "m", seen, Queueing::Behind);
        assert!(matches!(behind, Ok(Turn::Wait(_))));
        assert!(q.has_waiting("m") && !q.has_waiting("other"));
        // ...and looks when none is left.
        assert!(matches!(
            q.enqueue(req(0, 4, "t"), "other", seen, Queueing::Behind),
            Ok(Turn::LookAgain)
        ));
    }

    #[test]
    fn a_woken_request_going_back_is_never_refused_for_a_full_queue() {
        let q = queue(1);
        let _other = wait(&q, req(0, 1, "t"), "m");
        assert_eq!(
            q.enqueue(req(0, 2, "t"), "m", q.events(), Queueing::Busy)
                .err(),
            Some(QueueFull(1))
        );
        assert!(matches!(
            q.enqueue(req(0, 2, "t"), "m", q.events(), Queueing::Again),
            Ok(Turn::Wait(_))
        ));
    }

    #[test]
    fn each_class_looks_once_per_event() {
        let q = queue(100);
        q.started("t");
        let mut a: Vec<_> = (0..5).map(|i| wait(&q, req(0, i, "t"), "a")).collect();
        let mut b: Vec<_> = (5..10).map(|i| wait(&q, req(0, i, "t"), "b")).collect();
        q.finished("t", "a");
        assert!(a[0].try_recv().is_ok());
        // a's first goes back (still busy): b's first looks, not a's second.
        let _a0 = q_wait_again(&q, req(0, 0, "t"), "a");
        q.went_back("a");
        assert!(b[0].try_recv().is_ok());
        assert!(a[1].try_recv().is_err());
        // b's first goes back too: nobody else looks for this event.
        let _b0 = q_wait_again(&q, req(0, 5, "t"), "b");
        q.went_back("b");
        for rx in a.iter_mut().skip(1).chain(b.iter_mut().skip(1)) {
            assert!(rx.try_recv().is_err());
        }
    }

    #[test]
    fn a_turn_given_up_goes_to_another_class_when_its_own_has_none() {
        let q = queue(10);
        q.started("t");
        let mut a = wait(&q, req(5, 1, "t"), "a");
        let mut b = wait(&q, req(0, 2, "t"), "b");
        q.finished("t", "a");
        assert!(a.try_recv().is_ok() && b.try_recv().is_err());
        // The "a" request woken for the slot gave up (deadline): "b" may use the slot.
        q.pass_on("a");
        assert!(b.try_recv().is_ok());
    }

    #[test]
    fn a_waiter_that_goes_back_hands_the_turn_to_another_class_once_per_event() {
        let q = queue(10);
        q.started("t");
        let mut a = wait(&q, req(9, 1, "t"), "a");
        let mut b = wait(&q, req(0, 2, "t"), "b");
        let mut c = wait(&q, req(0, 3, "t"), "c");
        q.finished("t", "a");
        assert!(a.try_recv().is_ok());
        // a's class is still busy (say, another version): it queues again, having looked
        // after the event, and the turn goes to b, then c.
        let mut a = q_wait_again(&q, req(9, 1, "t"), "a");
        q.went_back("a");
        assert!(b.try_recv().is_ok());
        assert!(c.try_recv().is_err() && a.try_recv().is_err());
        let mut b = q_wait_again(&q, req(0, 2, "t"), "b");
        q.went_back("b");
        assert!(c.try_recv().is_ok());
        let _c = q_wait_again(&q, req(0, 3, "t"), "c");
        // Everyone looked since the last event: the chain ends.
        q.went_back("c");
        assert!(a.try_recv().is_err() && b.try_recv().is_err());
    }
}
