//! The in-process stores keep their users in shards, each behind its own lock. A flush
//! writes thousands of users at once: grouped by shard, each shard's lock is taken once per
//! call, not once per user (the two engine threads' flushes contend for the same locks).

use crate::domain::keys::owner_shard;

/// The positions of `keys` in shard order (a counting sort: stable, one pass to count, one to
/// place), with where each shard's run starts: `(order, starts)`, shard `s`'s keys being
/// `order[starts[s]..starts[s + 1]]`.
pub(super) fn by_shard<'a>(
    keys: impl ExactSizeIterator<Item = &'a str>,
    shards: usize,
) -> (Vec<u32>, Vec<usize>) {
    let of: Vec<u16> = keys.map(|k| owner_shard(k, shards) as u16).collect();
    let mut starts = vec![0usize; shards + 1];
    for &s in &of {
        starts[s as usize + 1] += 1;
    }
    for s in 0..shards {
        starts[s + 1] += starts[s];
    }
    let mut next = starts.clone();
    let mut order = vec![0u32; of.len()];
    for (i, &s) in of.iter().enumerate() {
        order[next[s as usize]] = i as u32;
        next[s as usize] += 1;
    }
    (order, starts)
}

/// Calls `each(shard, positions)` for every shard holding some of `keys`, in shard order.
pub(super) fn for_each_shard<'a>(
    keys: impl ExactSizeIterator<Item = &'a str>,
    shards: usize,
    mut each: impl FnMut(usize, &[u32]),
) {
    let (order, starts) = by_shard(keys, shards);
    for s in 0..shards {
        let run = &order[starts[s]..starts[s + 1]];
        if !run.is_empty() {
            each(s, run);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_once_in_its_own_shard_in_input_order() {
        let keys: Vec<String> = (0..500).map(|i| format!("user-{i}")).collect();
        let mut seen = vec![0; keys.len()];
        let mut last_shard = None;
        for_each_shard(keys.iter().map(|k| k.as_str()), 7, |shard, run| {
            assert!(last_shard < Some(shard), "shards in order, each once");
            last_shard = Some(shard);
            assert!(run.windows(2).all(|w| w[0] < w[1]), "input order kept");
            for &i in run {
                assert_eq!(owner_shard(&keys[i as usize], 7), shard);
                seen[i as usize] += 1;
            }
        });
        assert!(seen.iter().all(|&n| n == 1), "each key exactly once");
        for_each_shard(std::iter::empty(), 7, |_, _| panic!("no keys, no shard"));
    }
}
