//! [`shed_soonest`]: room in a full cache without emptying it.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash};

/// Removes from `map` the `count` entries whose `due` is earliest (those
/// due to expire or be renewed soonest, the next to go anyway), in one
/// selection and one pass: how a bounded cache makes room when it is full.
/// Emptying it instead would send every caller in use back to where the
/// entries came from at once; an eighth at a time costs one pass per
/// eighth of insertions. Of entries due at the same instant, any go.
///
/// ```
/// use std::collections::HashMap;
/// use palisade_core::authn::shed_soonest;
/// let mut expiries: HashMap<&str, u64> = HashMap::from([("a", 30), ("b", 10), ("c", 20)]);
/// shed_soonest(&mut expiries, 2, |&exp| exp);
/// assert_eq!(expiries.into_keys().collect::<Vec<_>>(), ["a"]);
/// ```
pub fn shed_soonest<K, V, S, O>(map: &mut HashMap<K, V, S>, count: usize, due: impl Fn(&V) -> O)
where
    K: Eq + Hash,
    S: BuildHasher,
    O: Ord + Copy,
{
    if count == 0 {
        return;
    }
    let mut dues: Vec<O> = map.values().map(&due).collect();
    if count >= dues.len() {
        map.clear();
        return;
    }
    let (before, &mut last, _) = dues.select_nth_unstable(count - 1);
    // Every entry due before `last` goes; of those due at `last`, as many
    // as make up `count` (not the first met, which could be all of them
    // before an earlier one is reached).
    let mut at_last = count - before.iter().filter(|&&d| d < last).count();
    map.retain(|_, v| match due(v).cmp(&last) {
        std::cmp::Ordering::Less => false,
        std::cmp::Ordering::Greater => true,
        std::cmp::Ordering::Equal if at_last > 0 => {
            at_last -= 1;
            false
        }
        std::cmp::Ordering::Equal => true,
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Entries due at the cut-off met before an earlier one do not take
    /// its place: the earliest always go.
    #[test]
    fn the_earliest_go_whatever_order_the_map_holds_them_in() {
        for seed in 0..64_u64 {
            let state = std::hash::RandomState::new();
            let mut map: HashMap<String, u64, _> = HashMap::with_hasher(state);
            for (k, d) in [("a", 5), ("b", 5), ("c", 3), ("d", 9)] {
                map.insert(format!("{k}{seed}"), d);
            }
            shed_soonest(&mut map, 2, |&d| d);
            let mut left: Vec<u64> = map.into_values().collect();
            left.sort_unstable();
            assert_eq!(left, [5, 9], "the entry due at 3 went, and one at 5");
        }
    }
}
