//! Counting open connections, in all and per peer address, before any TLS work: a guard
//! per connection, released when its session ends.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

/// Open connections, in all and per peer address: checked before any TLS work, so one
/// host re-opening idle sockets cannot take every place.
#[derive(Debug, Default)]
pub struct Connections {
    total: usize,
    per_ip: HashMap<IpAddr, usize>,
}

/// Which bound a connection hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    Total,
    PerAddress,
}

/// A place among all open connections, taken at accept before the peer's address is
/// known (with `--proxy-protocol` it comes later, in the header); released on drop.
pub struct Place {
    shared: Arc<Mutex<Connections>>,
}

impl Place {
    /// Counts one more connection, unless `max` are open.
    pub fn try_new(shared: &Arc<Mutex<Connections>>, max: usize) -> Result<Self, Refused> {
        let mut c = shared
            .lock()
            .expect("never poisoned: no panics under the lock");
        if c.total >= max {
            return Err(Refused::Total);
        }
        c.total += 1;
        Ok(Place {
            shared: shared.clone(),
        })
    }

    /// Counts the connection against `ip` too, unless that bound (0: none) is reached;
    /// a refused connection gives its place back.
    pub fn for_address(self, ip: IpAddr, max_per_ip: usize) -> Result<ConnectionGuard, Refused> {
        let mut c = self.shared.lock().expect("never poisoned");
        let mine = c.per_ip.get(&ip).copied().unwrap_or(0);
        if max_per_ip > 0 && mine >= max_per_ip {
            return Err(Refused::PerAddress);
        }
        c.per_ip.insert(ip, mine + 1);
        drop(c);
        Ok(ConnectionGuard { place: self, ip })
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        self.shared.lock().expect("never poisoned").total -= 1;
    }
}

/// One open connection in `Connections`, counted in all and for its address, released on
/// drop (with its session).
pub struct ConnectionGuard {
    /// Dropped after `drop` below has released the address's count.
    place: Place,
    ip: IpAddr,
}

impl ConnectionGuard {
    /// Counts one more connection from `ip`, unless a bound (0: none) is reached.
    pub fn try_new(
        shared: &Arc<Mutex<Connections>>,
        ip: IpAddr,
        max: usize,
        max_per_ip: usize,
    ) -> Result<Self, Refused> {
        Place::try_new(shared, max)?.for_address(ip, max_per_ip)
    }
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        let mut c = self.place.shared.lock().expect("never poisoned");
        if let Some(n) = c.per_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                c.per_ip.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_bounds_in_all_and_per_address() {
        let shared = Arc::new(Mutex::new(Connections::default()));
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let first = ConnectionGuard::try_new(&shared, a, 3, 2).unwrap();
        let _second = ConnectionGuard::try_new(&shared, a, 3, 2).unwrap();
        assert_eq!(
            ConnectionGuard::try_new(&shared, a, 3, 2).err(),
            Some(Refused::PerAddress)
        );
        let _other = ConnectionGuard::try_new(&shared, b, 3, 2).unwrap();
        assert_eq!(
            ConnectionGuard::try_new(&shared, b, 3, 2).err(),
            Some(Refused::Total)
        );
        drop(first);
        assert!(ConnectionGuard::try_new(&shared, a, 3, 2).is_ok());
        assert!(
            ConnectionGuard::try_new(&shared, a, 5, 0).is_ok(),
            "0: no per-address bound"
        );
    }

    #[test]
    fn a_place_taken_before_the_address_is_known_counts_in_all_at_once() {
        let shared = Arc::new(Mutex::new(Connections::default()));
        let a: IpAddr = "203.0.113.7".parse().unwrap();
        let first = Place::try_new(&shared, 2).unwrap();
        let waiting = Place::try_new(&shared, 2).unwrap();
        // A flood of connections whose header has not come is bounded by the total.
        assert_eq!(Place::try_new(&shared, 2).err(), Some(Refused::Total));
        let guard = first.for_address(a, 1).unwrap();
        // The second from the same address is refused and gives its place back.
        assert_eq!(waiting.for_address(a, 1).err(), Some(Refused::PerAddress));
        let third = Place::try_new(&shared, 2).unwrap();
        drop(guard);
        let again = third.for_address(a, 1).unwrap();
        drop(again);
        let c = shared.lock().unwrap();
        assert_eq!((c.total, c.per_ip.len()), (0, 0), "all released: {c:?}");
    }
}
