//! Key lifecycle: the rules, and changes whose caller goes away.

mod audit;
mod interrupted;
mod rules;
