//! rcri's built-in pause: the infra process of every pod. It holds the
//! pod's namespaces, reaps orphans when it is PID 1 of a shared PID
//! namespace, and exits on SIGTERM or SIGINT.
//!
//! build.rs compiles this file on its own, statically linked, with no crates:
//! the pause rootfs holds nothing but this binary.

use std::ffi::c_int;

const SIGINT: c_int = 2;
const SIGTERM: c_int = 15;
const SIGCHLD: c_int = 17;
const WNOHANG: c_int = 1;

unsafe extern "C" {
    fn signal(signum: c_int, handler: extern "C" fn(c_int)) -> usize;
    fn pause() -> c_int;
    fn waitpid(pid: c_int, status: *mut c_int, options: c_int) -> c_int;
    fn _exit(status: c_int) -> !;
}

extern "C" fn exit_now(_: c_int) {
    // SAFETY: _exit is async-signal-safe and takes no pointers.
    unsafe { _exit(0) }
}

extern "C" fn reap(_: c_int) {
    // SAFETY: waitpid is async-signal-safe; a null status pointer is allowed.
    while unsafe { waitpid(-1, std::ptr::null_mut(), WNOHANG) } > 0 {}
}

fn main() {
    // SAFETY: the handlers only call async-signal-safe functions.
    unsafe {
        signal(SIGINT, exit_now);
        signal(SIGTERM, exit_now);
        signal(SIGCHLD, reap);
    }
    loop {
        // SAFETY: pause has no arguments; it returns after each signal.
        unsafe { pause() };
    }
}
