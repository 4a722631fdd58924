// Deterministic replay of the pipeline, in the spirit of Unbound's .rpl files: a scenario
// (test/replay/*.rpl) drives the real Pipeline with a fake upstream, a fake set writer and
// a fake clock, and checks what the client got, what went upstream and what the sets hold.
// No socket, no kernel, no wall clock: the same scenario gives the same result every time.
//
// A scenario is a sequence of steps, one per line ('#' starts a comment); steps that take a
// block read it up to a line "END".
//
//   CONFIG ARGS...                  serve options for the pipeline (before the first query)
//   ALLOWLIST / RELOAD              the allowlist text (block); RELOAD puts a new one in force
//   QUERY ID NAME TYPE [tcp] [noedns] [bufsize=N] [class=CH]
//                                   a client query; ID names it in later steps
//   CHECK_OUT_QUERY NAME TYPE [noedns] [samecase]
//                                   a query for NAME/TYPE is pending upstream (exactly one)
//   CHECK_NO_OUT_QUERY              nothing is pending upstream
//   CHECK_OUT_COUNT N               queries sent upstream so far, retries included
//   REPLY NAME TYPE [RCODE] [case=flip] [noopt-formerr]
//                                   answers the pending upstream query for NAME/TYPE with
//                                   the block's records in the answer section
//   UPSTREAM_FAIL NAME TYPE timeout|refused
//   TIME_PASSES MS                  the fake clock moves; due timers run
//   SETS fail|fail-ports|ok         the set writer refuses what comes next (fail-ports: any
//                                   vouch with a port element of ports=), or takes it
//   RULESET in-force | RULESET not-in-force REASON...
//                                   the ruleset's state from now on (in force, id
//                                   0123456789abcdef, 14 rules in chain output, until set)
//   RULESET_ON_VOUCH in-force | not-in-force REASON...
//                                   the same, set by the next vouch (which succeeds), as
//                                   NftSets::vouch() judges the ruleset when it finds a set
//                                   gone without an event
//   CHECK_ANSWER ID RCODE [tc] [ede=N] [edetext=WORD]...
//                                   the reply to query ID: its RCODE, TC, EDE code, words its
//                                   EDE text holds, and the answer section exactly as the
//                                   block lists it
//   CHECK_NO_ANSWER ID              no reply to query ID yet
//   CHECK_SET ADDR SECONDS|absent   the element and the seconds it has left
//   CHECK_SET_SIZE N                elements held
//   CHECK_NAMES ADDR NAME...        exactly the names the element is bound to
//   CHECK_VOUCH_CALLS N             vouches the set writer took so far
//   CHECK_LAST_VOUCH NAME...        exactly the names the last vouch bound
//   CHECK_COUNTER NAME N            a pipeline counter (a member of struct Counters)
//   TCP_RESUME_ON_DELIVER ID NAME TYPE
//                                   from now on, each forwarded reply starts this query from
//                                   inside deliver(), as a paused TCP connection does
//   CHECK_TIMERS_AT_MOST N          timers armed
//   CHECK_LOG WORD...               a line logged so far holds every word
#pragma once
#include <string>

namespace dnsward::replay {

/// Runs the scenario at path; fails the current doctest test case with file:line on the
/// first step that does not hold.
void run(const std::string& path);

}  // namespace dnsward::replay
