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

/// One open connection in `Connections`, released on drop (with its session).
pub struct ConnectionGuard {
    shared: Arc<Mutex<Connections>>,
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
        let mut c = shared
            .lock()
            .expect("never poisoned: no panics under the lock");
        if c.total >= max {
            return Err(Refused::Total);
        }
        let mine = c.per_ip.entry(ip).or_default();
        if max_per_ip > 0 && *mine >= max_per_ip {
            return Err(Refused::PerAddress);
        }
        *mine += 1;
        c.total += 1;
        Ok(ConnectionGuard {
            shared: shared.clone(),
            ip,
        })
    }
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        let mut c = self.shared.lock().expect("never poisoned");
        c.total -= 1;
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
}
