//! Hash slots: which of Redis Cluster's 16384 slots a key belongs to, and entries grouped by
//! slot, because one script call may only touch keys of one slot (`CROSSSLOT` otherwise).
//!
//! The slot is CRC16 (XMODEM) of the key modulo 16384, or of its hash tag — the text between
//! the first `{` and the next `}`, when not empty — exactly as Redis computes it. Prism adds no
//! hash tags of its own: its keys spread over every slot and so over every master.

use crate::Entry;

/// Slots of a Redis Cluster.
pub(crate) const SLOTS: u16 = 16384;

/// The hash slot of `key`, as Redis Cluster computes it (`CLUSTER KEYSLOT`).
pub fn key_slot(key: &[u8]) -> u16 {
    crc16_xmodem(hash_tag(key)) % SLOTS
}

/// The part of `key` that is hashed: its hash tag when it has a non-empty one, else all of it.
fn hash_tag(key: &[u8]) -> &[u8] {
    let Some(open) = key.iter().position(|b| *b == b'{') else { return key };
    match key[open + 1..].iter().position(|b| *b == b'}') {
        Some(len) if len > 0 => &key[open + 1..open + 1 + len],
        _ => key,
    }
}

/// CRC16-CCITT (XMODEM): polynomial 0x1021, initial value 0, as in Redis' `crc16.c`.
fn crc16_xmodem(bytes: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for byte in bytes {
        crc ^= u16::from(*byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 { (crc << 1) ^ 0x1021 } else { crc << 1 };
        }
    }
    crc
}

/// Entries of one slot, in the order they were given.
#[derive(Debug)]
pub(crate) struct SlotGroup<'e, 'a> {
    /// The slot of every entry.
    pub slot: u16,
    /// The entries.
    pub entries: Vec<&'e Entry<'a>>,
}

/// `entries` grouped by slot; groups in the order of their first entry.
pub(crate) fn group_by_slot<'e, 'a>(entries: &'e [Entry<'a>]) -> Vec<SlotGroup<'e, 'a>> {
    let mut groups: Vec<SlotGroup<'e, 'a>> = Vec::new();
    let mut index: std::collections::HashMap<u16, usize> = std::collections::HashMap::new();
    for entry in entries {
        let slot = key_slot(entry.key.as_bytes());
        let at = *index.entry(slot).or_insert_with(|| {
            groups.push(SlotGroup { slot, entries: Vec::new() });
            groups.len() - 1
        });
        groups[at].entries.push(entry);
    }
    groups
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_the_ones_redis_computes() {
        // Values from Redis' cluster specification and `CLUSTER KEYSLOT`.
        assert_eq!(crc16_xmodem(b"123456789"), 0x31C3);
        assert_eq!(key_slot(b"foo"), 12182);
        assert_eq!(key_slot(b"bar"), 5061);
        assert_eq!(key_slot(b"hello"), 866);
        assert_eq!(key_slot(b""), 0);
    }

    #[test]
    fn hash_tags_follow_the_redis_rules() {
        assert_eq!(key_slot(b"{user1000}.following"), key_slot(b"user1000"));
        assert_eq!(key_slot(b"{user1000}.followers"), key_slot(b"user1000"));
        // Only the first `{` counts, and the first `}` after it.
        assert_eq!(key_slot(b"foo{{bar}}zap"), key_slot(b"{bar"));
        assert_eq!(key_slot(b"foo{bar}{zap}"), key_slot(b"bar"));
        // An empty tag or no closing brace: the whole key is hashed.
        assert_eq!(key_slot(b"foo{}{bar}"), crc16_xmodem(b"foo{}{bar}") % SLOTS);
        assert_eq!(key_slot(b"foo{bar"), crc16_xmodem(b"foo{bar") % SLOTS);
    }

    #[test]
    fn prism_keys_spread_over_many_slots() {
        let keys: Vec<String> = (0..1000).map(|i| format!("prism:g1:device:{i:08}")).collect();
        let slots: std::collections::HashSet<u16> = keys.iter().map(|k| key_slot(k.as_bytes())).collect();
        assert!(slots.len() > 900, "1000 keys in only {} slots", slots.len());
    }

    #[test]
    fn grouping_keeps_every_entry_once_in_its_slot_and_in_order() {
        let keys: Vec<String> = (0..500).map(|i| format!("k:{}", i % 120)).collect();
        let entries: Vec<Entry<'_>> = keys
            .iter()
            .enumerate()
            .map(|(i, key)| Entry { key, revision: i as i64, version: 0, document: "{}" })
            .collect();
        let groups = group_by_slot(&entries);
        let total: usize = groups.iter().map(|g| g.entries.len()).sum();
        assert_eq!(total, entries.len());
        let mut seen = std::collections::HashSet::new();
        for group in &groups {
            assert!(seen.insert(group.slot), "slot {} in two groups", group.slot);
            assert!(group.entries.iter().all(|e| key_slot(e.key.as_bytes()) == group.slot));
            assert!(
                group.entries.windows(2).all(|w| w[0].revision < w[1].revision),
                "order kept within a slot"
            );
        }
    }
}
