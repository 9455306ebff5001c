//! Software prefetch, the one place the core uses `unsafe`.

/// Asks the CPU to start loading the cache line holding `value`. Purely a performance hint: it
/// has no observable effect and cannot fault, even for an address that is not mapped.
#[inline(always)]
#[allow(unsafe_code)]
pub(crate) fn read<T>(value: &T) {
    #[cfg(target_arch = "x86_64")]
    {
        use core::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
        // SAFETY: PREFETCHT0 is a hint; it reads no memory architecturally and never faults.
        unsafe { _mm_prefetch::<_MM_HINT_T0>((value as *const T).cast::<i8>()) };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = value;
}
