//! The cluster's layout as Prism needs it: which master serves each slot, and how many
//! replicas it has that the cluster does not consider failed — the ones that could take over
//! from it. Read from `CLUSTER NODES`, which every Redis with a cluster answers and which lists
//! every node with its flags (`CLUSTER SLOTS` leaves out replicas that have not replicated
//! anything yet, so a fresh cluster would look as if it had none).
//!
//! Writes use it to send the slot groups of one master together and to know how many
//! replicas to wait for; prefix deletes use it to find every master. It is a snapshot: the
//! cluster client follows redirections on its own, and a snapshot that turns out wrong (a
//! master had more replicas online than it said, or fewer acknowledged) is read again.

use std::time::Duration;

use tokio::time::Instant;

/// How long a snapshot is trusted before it is read again, even when nothing went wrong
/// (replicas that joined are waited for from then on).
const MAX_AGE: Duration = Duration::from_secs(1);

/// A master node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Master {
    /// Its node id.
    pub id: String,
    /// Host clients reach it at: its announced host name, else its IP.
    pub host: String,
    /// Its port.
    pub port: u16,
}

/// Slots `start..=end`, served by `master`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SlotRange {
    /// First slot.
    pub start: u16,
    /// Last slot.
    pub end: u16,
    /// The master serving them.
    pub master: Master,
    /// Its replicas that the cluster does not consider failed.
    pub replicas: u32,
}

/// The layout at one moment.
#[derive(Debug, Clone)]
pub(crate) struct Topology {
    /// Ranges ordered by first slot.
    ranges: Vec<SlotRange>,
    /// When it was read.
    read_at: Instant,
}

/// One line of `CLUSTER NODES`.
struct Line<'t> {
    id: &'t str,
    host: String,
    port: u16,
    flags: Vec<&'t str>,
    master_id: Option<&'t str>,
    slots: Vec<(u16, u16)>,
}

impl Topology {
    /// Reads `CLUSTER NODES`' answer: one node per line, `<id> <ip:port@bus[,hostname]>
    /// <flags> <master id or -> <ping> <pong> <epoch> <link> <slot or range>…`; slots being
    /// imported or migrated (`[…]`) are left to their current owner.
    pub(crate) fn parse(text: &str) -> Result<Self, String> {
        let lines: Vec<Line<'_>> =
            text.lines().filter(|l| !l.trim().is_empty()).map(parse_line).collect::<Result<_, _>>()?;
        let mut ranges = Vec::new();
        for master in lines.iter().filter(|l| !l.slots.is_empty()) {
            let replicas = lines
                .iter()
                .filter(|l| {
                    l.master_id == Some(master.id) && l.flags.contains(&"slave") && !l.flags.contains(&"fail")
                })
                .count();
            let replicas = u32::try_from(replicas).unwrap_or(u32::MAX);
            for &(start, end) in &master.slots {
                let master =
                    Master { id: master.id.to_owned(), host: master.host.clone(), port: master.port };
                ranges.push(SlotRange { start, end, master, replicas });
            }
        }
        ranges.sort_by_key(|r| r.start);
        Ok(Self { ranges, read_at: Instant::now() })
    }

    /// Whether it is old enough to be read again.
    pub(crate) fn expired(&self) -> bool {
        self.read_at.elapsed() > MAX_AGE
    }

    /// The range holding `slot`; `None` when no master serves it.
    pub(crate) fn range_of(&self, slot: u16) -> Option<&SlotRange> {
        let at = self.ranges.partition_point(|r| r.start <= slot);
        at.checked_sub(1).map(|i| &self.ranges[i]).filter(|r| r.end >= slot)
    }

    /// Every master serving slots, with the first slot it serves.
    pub(crate) fn masters(&self) -> Vec<(Master, u16)> {
        let mut masters: Vec<(Master, u16)> = Vec::new();
        for range in &self.ranges {
            if !masters.iter().any(|(m, _)| m.id == range.master.id) {
                masters.push((range.master.clone(), range.start));
            }
        }
        masters
    }

    /// Which master serves which slots, for telling whether the layout changed.
    pub(crate) fn assignment(&self) -> Vec<(u16, u16, &str)> {
        self.ranges.iter().map(|r| (r.start, r.end, r.master.id.as_str())).collect()
    }
}

fn parse_line(line: &str) -> Result<Line<'_>, String> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    if fields.len() < 8 {
        return Err(format!("unreadable CLUSTER NODES line `{line}`"));
    }
    let (address, hostname) = match fields[1].split_once(',') {
        Some((address, rest)) => (address, rest.split(',').next().filter(|h| !h.is_empty())),
        None => (fields[1], None),
    };
    let address = address.split('@').next().unwrap_or(address);
    let (ip, port) =
        address.rsplit_once(':').ok_or_else(|| format!("no port in CLUSTER NODES line `{line}`"))?;
    let port = port.parse().map_err(|_| format!("bad port in CLUSTER NODES line `{line}`"))?;
    let mut slots = Vec::new();
    for slot in fields[8..].iter().filter(|s| !s.starts_with('[')) {
        let (start, end) = slot.split_once('-').unwrap_or((slot, slot));
        let parse = |s: &str| {
            s.parse::<u16>().map_err(|_| format!("bad slot `{slot}` in CLUSTER NODES line `{line}`"))
        };
        slots.push((parse(start)?, parse(end)?));
    }
    Ok(Line {
        id: fields[0],
        host: hostname.unwrap_or(ip).to_owned(),
        port,
        flags: fields[2].split(',').collect(),
        master_id: (fields[3] != "-").then_some(fields[3]),
        slots,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const NODES: &str = "\
a 127.0.0.1:7000@17000 myself,master - 0 0 1 connected 0-5000 5001-5460 [5461-<-b]
b 127.0.0.1:7001@17001 master - 0 1 2 connected 5461-10922
c 127.0.0.1:7002@17002,cache-c.example master - 0 1 3 connected 10923-16383
d 127.0.0.1:7003@17003 slave a 0 1 1 connected
e 127.0.0.1:7004@17004 slave,fail b 0 1 2 disconnected
f 127.0.0.1:7005@17005 slave,fail? c 0 1 3 connected
g 127.0.0.1:7006@17006 slave c 0 1 3 connected
h 127.0.0.1:7007@17007 master,fail - 0 1 0 disconnected
";

    #[test]
    fn slots_map_to_their_master_and_the_replicas_that_could_take_over() {
        let topology = Topology::parse(NODES).expect("parses");
        let of = |slot| topology.range_of(slot).map(|r| (r.master.id.clone(), r.master.port, r.replicas));
        assert_eq!(of(0), Some(("a".into(), 7000, 1)));
        assert_eq!(of(5460), Some(("a".into(), 7000, 1)));
        assert_eq!(of(5461), Some(("b".into(), 7001, 0)), "a failed replica does not count");
        assert_eq!(of(16383), Some(("c".into(), 7002, 2)), "a replica only suspected to fail counts");
        let masters: Vec<(String, String, u16)> =
            topology.masters().into_iter().map(|(m, first)| (m.id, m.host, first)).collect();
        assert_eq!(
            masters,
            [
                ("a".into(), "127.0.0.1".into(), 0),
                ("b".into(), "127.0.0.1".into(), 5461),
                ("c".into(), "cache-c.example".into(), 10923)
            ],
            "each master serving slots once, by its host name when it announces one"
        );
    }

    #[test]
    fn slots_without_a_master_have_no_range() {
        let topology =
            Topology::parse("a 127.0.0.1:7000@17000 myself,master - 0 0 1 connected 0-99\n").expect("parses");
        assert!(topology.range_of(99).is_some());
        assert!(topology.range_of(100).is_none());
        assert!(topology.range_of(16383).is_none());
    }

    #[test]
    fn garbage_is_an_error() {
        assert!(Topology::parse("what").is_err());
        assert!(Topology::parse("a 127.0.0.1:7000@17000 master - 0 0 1 connected 0-x\n").is_err());
    }
}
