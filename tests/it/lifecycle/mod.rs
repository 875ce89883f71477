//! Key lifecycle: the rules, and changes whose caller goes away.

mod interrupted;
mod rules;
