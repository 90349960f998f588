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
    let (_, &mut last, _) = dues.select_nth_unstable(count - 1);
    let mut left = count;
    map.retain(|_, v| {
        let keep = left == 0 || due(v) > last;
        if !keep {
            left -= 1;
        }
        keep
    });
}
