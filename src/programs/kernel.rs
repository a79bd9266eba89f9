//! Whether the running kernel has every hook programs mode attaches: the getsockname and
//! getpeername hooks came last, in Linux 5.8.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KernelError {
    #[error("programs mode needs Linux {}.{} or later (its getsockname/getpeername hooks); this kernel is {release}", MINIMUM.0, MINIMUM.1)]
    TooOld { release: String },
    #[error("cannot tell the kernel version from {release:?}")]
    Unknown { release: String },
}

pub const MINIMUM: (u32, u32) = (5, 8);

/// Checks the running kernel (`/proc/sys/kernel/osrelease`).
pub fn check() -> Result<(), KernelError> {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    check_release(release.trim())
}

/// `release` as uname(2) gives it, e.g. `6.18.44-fc-v782` or `5.4.0-150-generic`.
pub fn check_release(release: &str) -> Result<(), KernelError> {
    let unknown = || KernelError::Unknown { release: release.into() };
    let mut parts = release.split(['.', '-']);
    let major: u32 = parts.next().and_then(|p| p.parse().ok()).ok_or_else(unknown)?;
    let minor: u32 = parts.next().and_then(|p| p.parse().ok()).ok_or_else(unknown)?;
    if (major, minor) < MINIMUM { Err(KernelError::TooOld { release: release.into() }) } else { Ok(()) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernels_before_5_8_are_refused_by_name() {
        for ok in ["5.8.0", "5.10.0-28-amd64", "6.18.44-fc-v782", "10.0"] {
            assert_eq!(check_release(ok), Ok(()), "{ok}");
        }
        for old in ["5.7.19", "4.19.0-26-amd64", "3.10.0-1160.el7.x86_64"] {
            let e = check_release(old).unwrap_err();
            assert_eq!(e, KernelError::TooOld { release: old.into() });
            assert!(e.to_string().contains("5.8") && e.to_string().contains(old), "{e}");
        }
        for bad in ["", "linux", "6"] {
            assert!(matches!(check_release(bad), Err(KernelError::Unknown { .. })), "{bad}");
        }
    }
}
