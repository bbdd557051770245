//! Copy-on-write containers for the replicated state, so that a snapshot
//! can take a consistent view of a registry of millions of files in
//! microseconds and write it out while `apply` goes on.
//!
//! Both split their content into pieces behind `Arc`s: cloning the whole
//! container clones the `Arc`s only (a few thousand pointers for ten
//! million files), and the first change to a piece that a clone still
//! shares copies that piece alone (`Arc::make_mut`): at most
//! [`SEGMENT`] records or one of [`SHARDS`] map shards, a fraction of a
//! millisecond, once per piece per snapshot.

use std::{
    borrow::Borrow,
    collections::HashMap,
    hash::{BuildHasher, BuildHasherDefault, Hash},
    sync::Arc,
};

/// Records per [`Segments`] piece.
pub const SEGMENT: usize = 4096;
/// Shards of a [`CowMap`].
pub const SHARDS: usize = 256;

/// A vector in pieces of [`SEGMENT`] records.
#[derive(Debug, Clone)]
pub struct Segments<T> {
    segs: Vec<Arc<Vec<T>>>,
    len: usize,
}

impl<T> Default for Segments<T> {
    fn default() -> Self {
        Segments {
            segs: Vec::new(),
            len: 0,
        }
    }
}

impl<T: Clone> Segments<T> {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn get(&self, i: usize) -> Option<&T> {
        (i < self.len).then(|| &self.segs[i / SEGMENT][i % SEGMENT])
    }

    /// The record at `i`, copying its piece first if a clone shares it.
    pub fn get_mut(&mut self, i: usize) -> Option<&mut T> {
        if i >= self.len {
            return None;
        }
        Some(&mut Arc::make_mut(&mut self.segs[i / SEGMENT])[i % SEGMENT])
    }

    pub fn push(&mut self, v: T) {
        if self.len.is_multiple_of(SEGMENT) {
            self.segs.push(Arc::new(Vec::with_capacity(SEGMENT)));
        }
        Arc::make_mut(self.segs.last_mut().expect("a segment")).push(v);
        self.len += 1;
    }

    pub fn iter(&self) -> impl Iterator<Item = &T> + '_ {
        self.segs.iter().flat_map(|s| s.iter())
    }
}

impl<T: Clone> std::ops::Index<usize> for Segments<T> {
    type Output = T;
    fn index(&self, i: usize) -> &T {
        self.get(i).expect("index in range")
    }
}

/// The shard hasher: fixed keys, so a key's shard is the same on every
/// member and every run (not that anything depends on it: iteration order
/// is never part of the replicated state, see `Registry::digest`).
type ShardHasher = BuildHasherDefault<std::collections::hash_map::DefaultHasher>;

/// A hash map in [`SHARDS`] shards.
#[derive(Debug, Clone)]
pub struct CowMap<K, V> {
    shards: Vec<Arc<HashMap<K, V>>>,
    len: usize,
}

impl<K, V> Default for CowMap<K, V> {
    fn default() -> Self {
        CowMap {
            shards: (0..SHARDS).map(|_| Arc::new(HashMap::new())).collect(),
            len: 0,
        }
    }
}

impl<K: Hash + Eq + Clone, V: Clone> CowMap<K, V> {
    fn shard<Q: Hash + ?Sized>(k: &Q) -> usize {
        (ShardHasher::default().hash_one(k) % SHARDS as u64) as usize
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn get<Q: Hash + Eq + ?Sized>(&self, k: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
    {
        self.shards[Self::shard(k)].get(k)
    }

    pub fn contains_key<Q: Hash + Eq + ?Sized>(&self, k: &Q) -> bool
    where
        K: Borrow<Q>,
    {
        self.get(k).is_some()
    }

    pub fn get_mut<Q: Hash + Eq + ?Sized>(&mut self, k: &Q) -> Option<&mut V>
    where
        K: Borrow<Q>,
    {
        let s = &mut self.shards[Self::shard(k)];
        if !s.contains_key(k) {
            return None;
        }
        Arc::make_mut(s).get_mut(k)
    }

    pub fn insert(&mut self, k: K, v: V) -> Option<V> {
        let old = Arc::make_mut(&mut self.shards[Self::shard(&k)]).insert(k, v);
        if old.is_none() {
            self.len += 1;
        }
        old
    }

    pub fn remove<Q: Hash + Eq + ?Sized>(&mut self, k: &Q) -> Option<V>
    where
        K: Borrow<Q>,
    {
        let s = &mut self.shards[Self::shard(k)];
        if !s.contains_key(k) {
            return None;
        }
        let old = Arc::make_mut(s).remove(k);
        self.len -= old.is_some() as usize;
        old
    }

    /// Keeps the entries for which `keep` holds; shards with nothing to
    /// drop are left shared.
    pub fn retain(&mut self, mut keep: impl FnMut(&K, &V) -> bool) {
        for s in &mut self.shards {
            if s.iter().all(|(k, v)| keep(k, v)) {
                continue;
            }
            let m = Arc::make_mut(s);
            let before = m.len();
            m.retain(|k, v| keep(k, v));
            self.len -= before - m.len();
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = (&K, &V)> + '_ {
        self.shards.iter().flat_map(|s| s.iter())
    }

    pub fn values(&self) -> impl Iterator<Item = &V> + '_ {
        self.shards.iter().flat_map(|s| s.values())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A clone is a frozen view: changes after it do not show in it, and
    /// pieces nobody changed stay shared.
    #[test]
    fn clones_are_frozen_views() {
        let mut v = Segments::default();
        for i in 0..(3 * SEGMENT + 5) {
            v.push(i);
        }
        let frozen = v.clone();
        *v.get_mut(7).unwrap() = 1_000_000;
        v.push(42);
        assert_eq!(frozen[7], 7);
        assert_eq!(frozen.len(), 3 * SEGMENT + 5);
        assert_eq!(v[7], 1_000_000);
        assert_eq!(v.len(), 3 * SEGMENT + 6);
        assert!(Arc::ptr_eq(&v.segs[1], &frozen.segs[1]));
        assert!(!Arc::ptr_eq(&v.segs[0], &frozen.segs[0]));
        assert_eq!(v.iter().count(), v.len());

        let mut m = CowMap::default();
        for i in 0..10_000u32 {
            m.insert(i, i);
        }
        let frozen = m.clone();
        m.remove(&3);
        *m.get_mut(&4).unwrap() = 0;
        m.retain(|k, _| *k != 5);
        assert_eq!((m.len(), frozen.len()), (9_998, 10_000));
        assert_eq!(frozen.get(&5), Some(&5));
        assert_eq!((frozen.get(&3), frozen.get(&4)), (Some(&3), Some(&4)));
        assert_eq!((m.get(&3), m.get(&4)), (None, Some(&0)));
        assert_eq!(m.iter().count(), m.len());
        let shared = m
            .shards
            .iter()
            .zip(&frozen.shards)
            .filter(|(a, b)| Arc::ptr_eq(a, b))
            .count();
        assert!(shared > SHARDS / 2, "only {shared} shards still shared");
    }
}
