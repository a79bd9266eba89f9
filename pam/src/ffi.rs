//! The module's only unsafe code: the entry points libpam calls, the few libpam calls the
//! module needs (Linux-PAM, libpam0g-dev's headers), and a safe wrapper around one
//! `pam_handle_t`. Each unsafe block says why it is sound.
//!
//! Written by hand rather than through a binding crate: `pamsm` is GPL-3.0, and
//! `pam-bindings` (MIT) has no `pam_getenv`/`pam_putenv`/`pam_syslog`, so the FFI for
//! those would be needed anyway; this is about a dozen declarations.
use std::ffi::{CStr, CString, c_char, c_int, c_void};

use crate::Entry;

#[repr(C)]
pub struct PamHandle {
    _private: [u8; 0],
}

pub const PAM_SUCCESS: c_int = 0;
pub const PAM_SYSTEM_ERR: c_int = 4;
pub const PAM_SESSION_ERR: c_int = 14;
pub const PAM_IGNORE: c_int = 25;
const PAM_USER: c_int = 2;
const PAM_SERVICE: c_int = 1;
const PAM_ERROR_MSG: c_int = 3;
const PAM_TEXT_INFO: c_int = 4;
/// `flags` bit: the application asked modules not to print messages.
pub const PAM_SILENT: c_int = 0x8000;

type Cleanup = extern "C" fn(*mut PamHandle, *mut c_void, c_int);

#[link(name = "pam")]
unsafe extern "C" {
    fn pam_get_item(pamh: *const PamHandle, item_type: c_int, item: *mut *const c_void) -> c_int;
    fn pam_getenv(pamh: *mut PamHandle, name: *const c_char) -> *const c_char;
    fn pam_putenv(pamh: *mut PamHandle, name_value: *const c_char) -> c_int;
    fn pam_set_data(pamh: *mut PamHandle, name: *const c_char, data: *mut c_void, cleanup: Option<Cleanup>) -> c_int;
    fn pam_get_data(pamh: *const PamHandle, name: *const c_char, data: *mut *const c_void) -> c_int;
    fn pam_syslog(pamh: *const PamHandle, priority: c_int, fmt: *const c_char, ...);
    fn pam_prompt(pamh: *mut PamHandle, style: c_int, response: *mut *mut c_char, fmt: *const c_char, ...) -> c_int;
}

/// Turns argc/argv into strings (lossily: PAM arguments are ASCII in practice).
///
/// # Safety
/// `argv` must point to `argc` valid NUL-terminated strings (as libpam guarantees).
unsafe fn args(argc: c_int, argv: *const *const c_char) -> Vec<String> {
    if argv.is_null() || argc <= 0 {
        return Vec::new();
    }
    (0..argc as usize)
        .filter_map(|i| {
            // SAFETY: i < argc, and argv has argc entries (the caller's contract).
            let p = unsafe { *argv.add(i) };
            // SAFETY: a non-null entry is a NUL-terminated string that outlives this call.
            (!p.is_null()).then(|| unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned())
        })
        .collect()
}

/// Key under which open_session leaves the sid it holds, for close_session.
const DATA_KEY: &CStr = c"sessiond_pam_sid";

extern "C" fn free_sid(_pamh: *mut PamHandle, data: *mut c_void, _status: c_int) {
    if !data.is_null() {
        // SAFETY: the only data stored under DATA_KEY is a Box<u32> from `set_sid`, and libpam
        // calls this cleanup once per stored pointer (or `set_sid` does, when storing failed).
        drop(unsafe { Box::from_raw(data as *mut u32) });
    }
}

/// One PAM handle, valid for the duration of a module call.
pub struct Handle {
    h: *mut PamHandle,
    pub silent: bool,
}

impl Handle {
    /// # Safety
    /// `h` must be the handle libpam passed to the current module call.
    unsafe fn new(h: *mut PamHandle, flags: c_int) -> Handle {
        Handle { h, silent: flags & PAM_SILENT != 0 }
    }

    fn item_str(&self, item: c_int) -> Option<String> {
        let mut p: *const c_void = std::ptr::null();
        // SAFETY: `self.h` is the live handle of this module call; `p` is a valid out pointer.
        let r = unsafe { pam_get_item(self.h, item, &mut p) };
        if r != PAM_SUCCESS || p.is_null() {
            return None;
        }
        // SAFETY: PAM_USER and PAM_SERVICE items are NUL-terminated strings owned by libpam,
        // valid until the item changes (not during this call); we copy it at once.
        Some(unsafe { CStr::from_ptr(p as *const c_char) }.to_string_lossy().into_owned())
    }

    pub fn user(&self) -> Option<String> {
        self.item_str(PAM_USER)
    }

    pub fn service(&self) -> Option<String> {
        self.item_str(PAM_SERVICE)
    }

    pub fn getenv(&self, name: &str) -> Option<String> {
        let name = CString::new(name).ok()?;
        // SAFETY: live handle; `name` is a NUL-terminated string that outlives the call.
        let p = unsafe { pam_getenv(self.h, name.as_ptr()) };
        // SAFETY: non-null: a NUL-terminated value owned by the handle's environment; copied at once.
        (!p.is_null()).then(|| unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned())
    }

    pub fn putenv(&self, name: &str, value: &str) -> Result<(), String> {
        let nv = CString::new(format!("{name}={value}")).map_err(|_| format!("{name}: value has a NUL byte"))?;
        // SAFETY: live handle; libpam copies the NUL-terminated "NAME=value" string.
        match unsafe { pam_putenv(self.h, nv.as_ptr()) } {
            PAM_SUCCESS => Ok(()),
            r => Err(format!("pam_putenv({name}) failed: {r}")),
        }
    }

    pub fn syslog(&self, priority: c_int, msg: &str) {
        if let Ok(m) = CString::new(msg.replace('\0', "?")) {
            // SAFETY: live handle; a "%s" format with exactly one NUL-terminated string argument.
            unsafe { pam_syslog(self.h, priority, c"%s".as_ptr(), m.as_ptr()) };
        }
    }

    /// Shows `msg` to the user through the application's conversation (unless PAM_SILENT).
    pub fn tell(&self, error: bool, msg: &str) {
        if self.silent {
            return;
        }
        if let Ok(m) = CString::new(msg.replace('\0', "?")) {
            let style = if error { PAM_ERROR_MSG } else { PAM_TEXT_INFO };
            let mut resp: *mut c_char = std::ptr::null_mut();
            // SAFETY: live handle; valid out pointer; a "%s" format with one string argument.
            unsafe { pam_prompt(self.h, style, &mut resp, c"%s".as_ptr(), m.as_ptr()) };
            if !resp.is_null() {
                // SAFETY: a response from pam_prompt is malloc'd and ours to free, once.
                unsafe { libc::free(resp as *mut c_void) };
            }
        }
    }

    /// Remembers the sid this handle holds (freed by libpam at pam_end).
    pub fn set_sid(&self, sid: Option<u32>) -> Result<(), String> {
        let data = match sid {
            Some(s) => Box::into_raw(Box::new(s)) as *mut c_void,
            None => std::ptr::null_mut(),
        };
        // SAFETY: live handle; DATA_KEY is static; `data` is null or a Box<u32> that libpam now
        // owns and hands back to `free_sid` (replacing an old value frees that one through it).
        match unsafe { pam_set_data(self.h, DATA_KEY.as_ptr(), data, Some(free_sid)) } {
            PAM_SUCCESS => Ok(()),
            r => {
                free_sid(self.h, data, 0);
                Err(format!("pam_set_data failed: {r}"))
            }
        }
    }

    pub fn sid(&self) -> Option<u32> {
        let mut p: *const c_void = std::ptr::null();
        // SAFETY: live handle; DATA_KEY is static; `p` is a valid out pointer.
        let r = unsafe { pam_get_data(self.h, DATA_KEY.as_ptr(), &mut p) };
        // SAFETY: a non-null value under DATA_KEY is the Box<u32> `set_sid` stored, still owned by libpam.
        (r == PAM_SUCCESS && !p.is_null()).then(|| unsafe { *(p as *const u32) })
    }
}

/// What every entry point does: refuse a null handle, else wrap it and run `f` (the safe part,
/// in lib.rs, which also catches panics).
///
/// # Safety
/// `pamh`, `argc` and `argv` are what libpam passed to the current module call.
unsafe fn entry(name: &str, pamh: *mut PamHandle, flags: c_int, argc: c_int, argv: *const *const c_char, f: Entry) -> c_int {
    if pamh.is_null() {
        return PAM_SESSION_ERR;
    }
    // SAFETY: non-null, and libpam's handle for this call (the caller's contract).
    let h = unsafe { Handle::new(pamh, flags) };
    // SAFETY: libpam passes argc valid NUL-terminated strings in argv (the caller's contract).
    crate::run(name, &h, || unsafe { args(argc, argv) }, f)
}

/// # Safety
/// Called by libpam with a valid handle and argv.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pam_sm_open_session(pamh: *mut PamHandle, flags: c_int, argc: c_int, argv: *const *const c_char) -> c_int {
    // SAFETY: passed through from libpam as received.
    unsafe { entry("open_session", pamh, flags, argc, argv, crate::module::open_session) }
}

/// # Safety
/// Called by libpam with a valid handle and argv.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pam_sm_close_session(pamh: *mut PamHandle, flags: c_int, argc: c_int, argv: *const *const c_char) -> c_int {
    // SAFETY: passed through from libpam as received.
    unsafe { entry("close_session", pamh, flags, argc, argv, crate::module::close_session) }
}

/// Not an auth module: ignore in `auth` stacks rather than fail if listed there by mistake.
///
/// # Safety
/// Called by libpam.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pam_sm_setcred(_pamh: *mut PamHandle, _flags: c_int, _argc: c_int, _argv: *const *const c_char) -> c_int {
    PAM_IGNORE
}
