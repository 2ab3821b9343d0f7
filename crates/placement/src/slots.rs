//! [`SlotSet`]: a set of node slots (indices into the placer's node table) with O(1) insert,
//! remove, membership and uniform random pick, so a best-of-K sample costs O(K) however many
//! nodes there are. The placer keeps one for ready nodes and one per warm template.

use rand::Rng;

/// A set of slot numbers: a dense list plus each member's position in it.
#[derive(Debug, Clone, Default)]
pub(crate) struct SlotSet {
    members: Vec<usize>,
    /// `pos[slot]` is the slot's index in `members` plus one; 0 when absent.
    pos: Vec<usize>,
}

impl SlotSet {
    pub(crate) fn len(&self) -> usize {
        self.members.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    pub(crate) fn contains(&self, slot: usize) -> bool {
        self.pos.get(slot).is_some_and(|&p| p != 0)
    }

    pub(crate) fn insert(&mut self, slot: usize) {
        if self.contains(slot) {
            return;
        }
        if self.pos.len() <= slot {
            self.pos.resize(slot + 1, 0);
        }
        self.members.push(slot);
        self.pos[slot] = self.members.len();
    }

    pub(crate) fn remove(&mut self, slot: usize) {
        if !self.contains(slot) {
            return;
        }
        let i = self.pos[slot] - 1;
        self.members.swap_remove(i);
        if let Some(&moved) = self.members.get(i) {
            self.pos[moved] = i + 1;
        }
        self.pos[slot] = 0;
    }

    /// A member picked uniformly, or `None` when empty.
    pub(crate) fn pick(&self, rng: &mut impl Rng) -> Option<usize> {
        if self.members.is_empty() {
            None
        } else {
            Some(self.members[rng.gen_range(0..self.members.len())])
        }
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = usize> + '_ {
        self.members.iter().copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{rngs::StdRng, SeedableRng};

    #[test]
    fn insert_remove_and_pick_stay_consistent() {
        let mut s = SlotSet::default();
        for i in [5, 1, 9, 3] {
            s.insert(i);
        }
        s.insert(9);
        assert_eq!(s.len(), 4);
        s.remove(1);
        s.remove(1);
        s.remove(42);
        assert!(!s.contains(1) && s.contains(5) && s.contains(9) && s.contains(3));
        let mut got: Vec<_> = s.iter().collect();
        got.sort();
        assert_eq!(got, [3, 5, 9]);
        let mut rng = StdRng::seed_from_u64(1);
        let mut seen = [false; 10];
        for _ in 0..200 {
            seen[s.pick(&mut rng).expect("non-empty")] = true;
        }
        assert_eq!(seen.iter().filter(|&&b| b).count(), 3);
        for i in [3, 5, 9] {
            s.remove(i);
        }
        assert!(s.is_empty() && s.pick(&mut rng).is_none());
    }
}
