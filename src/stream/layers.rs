//! Layers by number: an accepted request's future names the layer that let it in by a plain
//! number instead of a reference count, so that a response that never stays open pays no
//! atomic operation for the layer's watch. The number is looked up (under a read lock) only
//! when a response that may stay open first waits.

use std::sync::{Arc, RwLock, Weak};

use super::check::Authority;
use crate::sync::{read, write};

/// A layer's number: its slot, and the slot's generation (a slot freed and taken again by
/// another layer has a new one, so an old number finds nothing).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct LayerNumber {
    slot: u32,
    generation: u32,
}

/// A layer's place in the table, freed when dropped (with the layer).
#[derive(Debug)]
pub(crate) struct Registered(LayerNumber);

impl Registered {
    pub(crate) fn number(&self) -> LayerNumber {
        self.0
    }
}

impl Drop for Registered {
    fn drop(&mut self) {
        let mut table = write(&TABLE);
        let slot = &mut table.slots[self.0.slot as usize];
        slot.generation = slot.generation.wrapping_add(1);
        slot.authority = None;
        table.free.push(self.0.slot);
    }
}

struct Slot {
    generation: u32,
    authority: Option<Weak<dyn Authority>>,
}

struct Table {
    slots: Vec<Slot>,
    free: Vec<u32>,
}

static TABLE: RwLock<Table> = RwLock::new(Table {
    slots: Vec::new(),
    free: Vec::new(),
});

/// Gives `authority` (a layer being built) a number until the returned registration is
/// dropped.
pub(crate) fn register(authority: Weak<dyn Authority>) -> Registered {
    let mut table = write(&TABLE);
    let slot = match table.free.pop() {
        Some(slot) => slot,
        None => {
            table.slots.push(Slot {
                generation: 0,
                authority: None,
            });
            u32::try_from(table.slots.len() - 1).expect("fewer than 2^32 layers at once")
        }
    };
    let entry = &mut table.slots[slot as usize];
    entry.authority = Some(authority);
    Registered(LayerNumber {
        slot,
        generation: entry.generation,
    })
}

/// The layer with this number, if it is still there.
pub(crate) fn find(number: LayerNumber) -> Option<Arc<dyn Authority>> {
    let table = read(&TABLE);
    let slot = table.slots.get(number.slot as usize)?;
    if slot.generation != number.generation {
        return None;
    }
    slot.authority.as_ref()?.upgrade()
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;
    use std::sync::Arc;

    use super::*;
    use crate::key::{KeyDigest, KeyPrefix};
    use crate::stream::StreamWatch;
    use crate::stream::check::Check;

    struct Layer;

    impl Authority for Layer {
        fn watch(&self) -> Option<&Arc<StreamWatch>> {
            None
        }

        fn check(&self, _: KeyPrefix, _: KeyDigest, _: Option<IpAddr>) -> Check {
            unreachable!("not asked")
        }

        fn ended(&self) {}
    }

    #[test]
    fn a_number_finds_its_layer_until_the_layer_is_gone_and_never_its_successor() {
        let first: Arc<dyn Authority> = Arc::new(Layer);
        let registered = register(Arc::downgrade(&first));
        let number = registered.number();
        assert!(find(number).is_some_and(|found| Arc::ptr_eq(&found, &first)));

        drop(registered);
        assert!(find(number).is_none(), "freed with the layer");

        // The slot is taken again (it is the freed one) by another layer: the old number
        // doesn't find it.
        let second: Arc<dyn Authority> = Arc::new(Layer);
        let again = register(Arc::downgrade(&second));
        assert!(find(number).is_none());
        assert!(find(again.number()).is_some());

        // A layer dropped without its registration (the Arc gone first) is not found either.
        drop(second);
        assert!(find(again.number()).is_none());
    }
}
