//! Pinning a thread to one CPU (Linux), so that threads which hand work to each other many
//! times per request do it on one CPU: a context switch instead of waking another CPU, which
//! on a VM costs tens of microseconds. Threads a pinned thread spawns inherit its pin.
//!
//! Best effort: when the CPU set cannot be read or set (another OS, a seccomp profile), the
//! thread simply stays unpinned.

/// Pins the calling thread to the highest-numbered CPU it may run on (CPU 0 tends to take
/// more interrupts). Returns the CPU, or `None` when nothing was pinned.
pub fn pin_current_thread_to_last_cpu() -> Option<usize> {
    imp::pin_current_thread_to_last_cpu()
}

#[cfg(target_os = "linux")]
mod imp {
    pub fn pin_current_thread_to_last_cpu() -> Option<usize> {
        // SAFETY: cpu_set_t is a plain bit array; zeroed is the empty set. Both calls take the
        // calling thread (pid 0) and a pointer/size pair to that local set.
        unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            let size = std::mem::size_of::<libc::cpu_set_t>();
            if libc::sched_getaffinity(0, size, &mut set) != 0 {
                return None;
            }
            let allowed = (0..libc::CPU_SETSIZE as usize)
                .filter(|&cpu| libc::CPU_ISSET(cpu, &set))
                .collect::<Vec<_>>();
            // One CPU allowed: nothing to gain; pinning would only hide that from the reader.
            if allowed.len() < 2 {
                return None;
            }
            let cpu = *allowed.last()?;
            let mut one: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(cpu, &mut one);
            if libc::sched_setaffinity(0, size, &one) != 0 {
                return None;
            }
            Some(cpu)
        }
    }
}

#[cfg(not(target_os = "linux"))]
mod imp {
    pub fn pin_current_thread_to_last_cpu() -> Option<usize> {
        None
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    #[test]
    fn pinned_thread_and_its_children_run_on_one_cpu() {
        std::thread::spawn(|| {
            let Some(cpu) = super::pin_current_thread_to_last_cpu() else {
                return; // a one-CPU machine: nothing to pin
            };
            let child = std::thread::spawn(|| unsafe {
                let mut set: libc::cpu_set_t = std::mem::zeroed();
                assert_eq!(
                    libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set),
                    0
                );
                (0..libc::CPU_SETSIZE as usize)
                    .filter(|&c| libc::CPU_ISSET(c, &set))
                    .collect::<Vec<_>>()
            })
            .join()
            .unwrap();
            assert_eq!(child, vec![cpu]);
        })
        .join()
        .unwrap();
    }
}
