//! The limits on `HELLO.args` (protocol §4.1): the server refuses a `HELLO` that breaks
//! them with `ERROR too_large`, and a client checks them before connecting.

/// Limits on the arguments, checked before anything runs. Linux refuses a single
/// argument above 128 KiB and an argv above a few MiB; staying well below both means the
/// exec in the bootstrap cannot fail for size.
pub const MAX_ARGS: usize = 4096;
pub const MAX_ARGS_BYTES: usize = 64 * 1024;

/// Why a `HELLO`'s arguments cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ArgsError {
    #[error("too many arguments ({0}, the limit is {MAX_ARGS})")]
    TooManyArgs(usize),
    #[error("arguments too large ({0} bytes, the limit is {MAX_ARGS_BYTES})")]
    ArgsTooLarge(usize),
    #[error("argument {0} contains a NUL byte")]
    NulInArg(usize),
}

pub fn check_args(args: &[String]) -> Result<(), ArgsError> {
    if args.len() > MAX_ARGS {
        return Err(ArgsError::TooManyArgs(args.len()));
    }
    let total: usize = args.iter().map(|a| a.len() + 1).sum();
    if total > MAX_ARGS_BYTES {
        return Err(ArgsError::ArgsTooLarge(total));
    }
    if let Some(i) = args.iter().position(|a| a.contains('\0')) {
        return Err(ArgsError::NulInArg(i + 1));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argument_limits() {
        assert!(check_args(&["a".into()]).is_ok());
        assert_eq!(check_args(&["a\0b".into()]), Err(ArgsError::NulInArg(1)));
        assert!(matches!(
            check_args(&["x".repeat(MAX_ARGS_BYTES)]),
            Err(ArgsError::ArgsTooLarge(_))
        ));
        assert!(matches!(
            check_args(&vec![String::new(); MAX_ARGS + 1]),
            Err(ArgsError::TooManyArgs(_))
        ));
    }
}
