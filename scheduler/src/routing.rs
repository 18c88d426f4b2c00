//! The placeholder routing policy: least in-flight among feasible workers, ties broken
//! by rotation. Pure: it sees loads, not connections.

/// Picks the index of the least-loaded worker not excluded. `rotation` breaks ties so
/// equal workers share the load in turn.
pub fn least_in_flight(loads: &[(u32, bool)], rotation: usize) -> Option<usize> {
    let n = loads.len();
    (0..n)
        .map(|i| (i + rotation) % n)
        .filter(|&i| !loads[i].1)
        .min_by_key(|&i| loads[i].0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table() {
        // (loads as (in_flight, excluded), rotation, expected)
        type Case<'a> = (&'a [(u32, bool)], usize, Option<usize>);
        let cases: [Case; 6] = [
            (&[], 0, None),
            (&[(3, false), (1, false), (2, false)], 0, Some(1)),
            (&[(3, false), (1, true), (2, false)], 0, Some(2)),
            (&[(0, true), (0, true)], 0, None),
            (&[(1, false), (1, false), (1, false)], 0, Some(0)),
            (&[(1, false), (1, false), (1, false)], 2, Some(2)),
        ];
        for (loads, rotation, expected) in cases {
            assert_eq!(
                least_in_flight(loads, rotation),
                expected,
                "{loads:?} rot {rotation}"
            );
        }
    }

    #[test]
    fn rotation_spreads_equal_load() {
        let loads = [(0, false); 3];
        let mut hits = [0; 3];
        for r in 0..30 {
            hits[least_in_flight(&loads, r).expect("some")] += 1;
        }
        assert_eq!(hits, [10, 10, 10]);
    }
}
