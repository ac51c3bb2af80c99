//! Compile-time checks of the macros: every error class has a case in `tests/ui/fail` with its
//! reviewed compiler output, and every option compiles in `tests/ui/pass`.

#[test]
fn macros_accept_every_option_and_reject_every_mistake() {
    let cases = trybuild::TestCases::new();
    cases.pass("tests/ui/pass/*.rs");
    cases.compile_fail("tests/ui/fail/*.rs");
}
