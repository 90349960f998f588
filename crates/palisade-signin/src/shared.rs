//! What a hot reload must not lose: one value per key for the whole
//! process, as long as something uses it (a relying party built from the
//! new configuration finds the one the old configuration made).

use std::sync::{Arc, Mutex, PoisonError, Weak};

/// Values by key, each kept while an `Arc` of it lives.
pub(crate) struct Registry<K, T>(Mutex<Vec<(K, Weak<T>)>>);

impl<K: PartialEq, T> Registry<K, T> {
    pub(crate) const fn new() -> Self {
        Self(Mutex::new(Vec::new()))
    }

    /// The live value of `key`, or the one `make` makes, then kept for
    /// `key` while it is used. `make` runs under the registry's lock: two
    /// callers never make two values for one key.
    pub(crate) fn get_or_make<E>(
        &self,
        key: K,
        make: impl FnOnce() -> Result<Arc<T>, E>,
    ) -> Result<Arc<T>, E> {
        let mut live = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        live.retain(|(_, weak)| weak.strong_count() > 0);
        if let Some(value) = live
            .iter()
            .filter(|(k, _)| *k == key)
            .find_map(|(_, weak)| weak.upgrade())
        {
            return Ok(value);
        }
        let value = make()?;
        live.push((key, Arc::downgrade(&value)));
        Ok(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_is_shared_while_used_and_made_again_after() {
        let registry: Registry<&str, u32> = Registry::new();
        let made = std::cell::Cell::new(0);
        let make = |n| {
            made.set(made.get() + 1);
            Ok::<_, ()>(Arc::new(n))
        };
        let first = registry.get_or_make("a", || make(1)).unwrap();
        let again = registry.get_or_make("a", || make(2)).unwrap();
        assert!(Arc::ptr_eq(&first, &again));
        let other = registry.get_or_make("b", || make(3)).unwrap();
        assert_eq!((*other, made.get()), (3, 2));
        drop((first, again));
        assert_eq!(
            *registry.get_or_make("a", || make(4)).unwrap(),
            4,
            "made anew once unused"
        );
        assert_eq!(made.get(), 3);
        assert_eq!(registry.get_or_make("c", || Err::<Arc<u32>, _>(())), Err(()));
    }
}
