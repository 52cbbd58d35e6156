//! Scheduling of the gateway's own threads: a lower nice value for helpers
//! that share a core with a worker, and the idle class for the log writer.
//! A leaf: it knows nothing of the threads that use it.

/// Lowers the calling thread's scheduling priority to `nice` (Linux: the
/// nice value is per thread). The tokenizer uses it so that on a core it
/// shares with a worker, the worker wins the CPU when both want it; it still
/// gets its share under load. (The log writer uses the idle class instead:
/// see [`ThreadClass`] and `reqlog::writer`.)
pub fn lower_thread_priority(nice: i32) {
    // SAFETY: plain system calls on the calling thread's own id.
    let rc = unsafe {
        let tid = libc::gettid();
        libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, nice)
    };
    if rc != 0 {
        log::debug!(
            "cannot lower this thread's priority: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// A thread's scheduling class.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThreadClass {
    /// Linux `SCHED_OTHER`, the default time-sharing class.
    Normal,
    /// Linux `SCHED_IDLE`: the thread runs when no normal thread wants its
    /// core, and a normal thread that wakes preempts it at once (the kernel's
    /// wake-up preemption makes no exception for it, unlike a thread at a
    /// high nice value, which keeps the core until its slice ends).
    Idle,
}

/// Moves the calling thread to `class`. Leaving `Idle` takes `CAP_SYS_NICE`
/// or an `RLIMIT_NICE` of at least 20 (see [`idle_class_is_reversible`]).
pub fn set_thread_class(class: ThreadClass) -> std::io::Result<()> {
    set_thread_class_of(0, class)
}

/// Moves thread `tid` of this process (0: the calling thread) to `class`;
/// the same rights as [`set_thread_class`].
pub fn set_thread_class_of(tid: libc::pid_t, class: ThreadClass) -> std::io::Result<()> {
    let policy = match class {
        ThreadClass::Normal => libc::SCHED_OTHER,
        ThreadClass::Idle => libc::SCHED_IDLE,
    };
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: a thread id (0: the calling thread) and a valid sched_param
    // that outlives the call.
    let rc = unsafe { libc::sched_setscheduler(tid, policy, &param) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Whether a thread of this process may enter [`ThreadClass::Idle`] and
/// leave it again. Tried on a throwaway thread, so a process that may enter
/// but not leave (no `CAP_SYS_NICE`, `RLIMIT_NICE` under 20, the usual case
/// for an unprivileged user outside the shipped systemd unit) strands no
/// thread that matters. `Err` says what refused.
pub fn idle_class_is_reversible() -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("bursar-probe".into())
        .spawn(|| {
            set_thread_class(ThreadClass::Idle)?;
            set_thread_class(ThreadClass::Normal)
        })?
        .join()
        // Reached only where no `abort_on_panic` hook is installed (a
        // gateway inside a test process); under `serve` a panic has already
        // ended the process.
        .unwrap_or_else(|_| Err(std::io::Error::other("the probe thread panicked")))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The calling thread's scheduling class (`None` for a real-time or
    /// other class).
    fn thread_class() -> Option<ThreadClass> {
        // SAFETY: a plain system call on the calling thread.
        match unsafe { libc::sched_getscheduler(0) } {
            libc::SCHED_OTHER => Some(ThreadClass::Normal),
            libc::SCHED_IDLE => Some(ThreadClass::Idle),
            _ => None,
        }
    }

    #[test]
    fn a_thread_enters_the_idle_class_and_leaves_it_when_the_probe_says_so() {
        let reversible = idle_class_is_reversible();
        let seen = std::thread::spawn(move || {
            let start = thread_class();
            set_thread_class(ThreadClass::Idle).unwrap();
            let idle = thread_class();
            let back = set_thread_class(ThreadClass::Normal).map(|()| thread_class());
            (start, idle, back)
        })
        .join()
        .unwrap();
        assert_eq!(seen.0, Some(ThreadClass::Normal));
        assert_eq!(seen.1, Some(ThreadClass::Idle));
        // The probe and a real thread agree on whether the way back is open.
        match (reversible, seen.2) {
            (Ok(()), Ok(class)) => assert_eq!(class, Some(ThreadClass::Normal)),
            (Err(_), Err(_)) => {}
            (probe, back) => panic!("probe {probe:?} but the way back {back:?}"),
        }
    }
}
