//! The process's file-descriptor budget. Connections to the gRPC port are
//! capped so that, whatever a client does, the admin port's connections,
//! the KVS connection pool and the process's own files still fit under
//! RLIMIT_NOFILE: kubelet's probes keep working when the gRPC port is full,
//! instead of every port failing at once with EMFILE.

#![allow(
    unsafe_code,
    reason = "the descriptor limit is read and raised through getrlimit/setrlimit"
)]

/// Descriptors kept for everything that is not a connection: the
/// listeners, the runtime's own, logs, the credential and config files.
const OWN: u64 = 64;

/// Raises the soft descriptor limit to the hard one (as Go's runtime does;
/// container runtimes commonly set a soft 1024 under a much higher hard
/// limit) and returns it. `None` when it cannot be read.
pub(crate) fn raise_limit() -> Option<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes only to the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return None;
    }
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: setrlimit reads only the struct we pass.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            limit = raised;
        }
    }
    Some(limit.rlim_cur)
}

/// The gRPC port's connection cap: `wanted`, or less when `wanted`, the
/// admin port's cap and the upstream pool would not fit in `limit`
/// descriptors together.
pub(crate) fn grpc_cap(wanted: usize, admin: usize, upstream: usize, limit: Option<u64>) -> usize {
    let Some(limit) = limit else { return wanted };
    let reserved = OWN + admin as u64 + upstream as u64;
    let room = limit.saturating_sub(reserved).max(1);
    wanted.min(usize::try_from(room).unwrap_or(usize::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_grpc_port_yields_to_the_admin_port_and_the_pool() {
        assert_eq!(grpc_cap(1000, 64, 256, Some(1_048_576)), 1000);
        assert_eq!(grpc_cap(1000, 64, 256, None), 1000);
        // 1024 descriptors: 64 own, 64 admin, 256 upstream leave 640.
        assert_eq!(grpc_cap(1000, 64, 256, Some(1024)), 640);
        assert_eq!(grpc_cap(1000, 64, 256, Some(100)), 1);
    }

    #[test]
    fn the_soft_limit_is_raised_to_the_hard_one() {
        let limit = raise_limit().expect("getrlimit");
        let mut now = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: as above.
        assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut now) }, 0);
        assert_eq!(now.rlim_cur, now.rlim_max);
        assert_eq!(limit, now.rlim_cur);
    }
}
