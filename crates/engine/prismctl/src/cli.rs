//! The command line, as clap types. Parsing is unit-tested below. The arguments of the
//! operations commands (`lag`, `offsets`, `dlq`) are in [`ops`].

use std::path::PathBuf;

use clap::{Parser, Subcommand};

mod ops;

pub use ops::*;

/// Operate a Prism deployment: schema, topics, lag, offsets, rebuilds, dead letters.
#[derive(Debug, Parser)]
#[command(name = "prismctl", version, about)]
pub struct Cli {
    /// Extra configuration file, layered over config/default.toml and PRISM_ENV's file
    /// (repeatable; later files win). Environment variables PRISM__SECTION__KEY win over all.
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Vec<PathBuf>,
    /// Log what is being done to stderr.
    #[arg(long, short, global = true)]
    pub verbose: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create the database and schema if missing, apply pending migrations, and make sure
    /// every registered read model has an active generation with its table. Idempotent.
    Migrate,
    /// The read models applications registered in this schema, with their generations.
    ReadModels {
        /// Output format.
        #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
        output: OutputFormat,
    },
    /// Manage the event and dead-letter topics.
    Topics {
        #[command(subcommand)]
        command: TopicsCommand,
    },
    /// Consumer lag per group, topic and partition: committed offset, high watermark, messages
    /// and seconds behind, and a catch-up estimate.
    Lag(LagArgs),
    /// Move a consumer group's committed offsets (dry run unless --execute).
    Offsets {
        #[command(subcommand)]
        command: OffsetsCommand,
    },
    /// Dead-lettered events: list, show, redrive after a fix, discard.
    Dlq {
        #[command(subcommand)]
        command: DlqCommand,
    },
    /// Rebuild read models from the event topics: in place, or blue/green beside the serving
    /// generation with an atomic switch.
    Rebuild(crate::commands::rebuild::RebuildArgs),
}

#[derive(Debug, Subcommand)]
pub enum TopicsCommand {
    /// Create missing topics with the configured partitions; report existing ones. Idempotent.
    Ensure,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("prismctl").chain(args.iter().copied()))
    }

    #[test]
    fn parses_migrate_and_topics_ensure() {
        assert!(matches!(parse(&["migrate"]).expect("parses").command, Command::Migrate));
        let cli = parse(&["topics", "ensure", "--config", "a.toml", "--config", "b.toml"]).expect("parses");
        assert!(matches!(cli.command, Command::Topics { command: TopicsCommand::Ensure }));
        assert_eq!(cli.config, vec![PathBuf::from("a.toml"), PathBuf::from("b.toml")]);
    }

    #[test]
    fn rejects_unknown_subcommands_and_missing_ones() {
        assert!(parse(&["migrat"]).is_err());
        assert!(parse(&["topics"]).is_err());
        assert!(parse(&[]).is_err());
    }

    #[test]
    fn parses_lag() {
        let cli = parse(&["lag"]).expect("parses");
        let Command::Lag(args) = cli.command else { panic!("lag") };
        assert!(args.group.is_empty() && args.watch.is_none() && args.output == OutputFormat::Text);
        let cli =
            parse(&["lag", "--group", "a", "--group", "b", "--watch", "--output", "json"]).expect("parses");
        let Command::Lag(args) = cli.command else { panic!("lag") };
        assert_eq!(args.group, vec!["a".to_owned(), "b".to_owned()]);
        assert_eq!(args.watch, Some(5), "--watch alone refreshes every 5 s");
        assert_eq!(args.output, OutputFormat::Json);
        let Command::Lag(args) = parse(&["lag", "--watch", "2", "--count", "3"]).expect("parses").command
        else {
            panic!("lag")
        };
        assert_eq!((args.watch, args.count), (Some(2), Some(3)));
        assert!(parse(&["lag", "--watch", "0"]).is_err(), "a zero interval is refused");
        assert!(parse(&["lag", "--count", "3"]).is_err(), "--count needs --watch");
        assert!(parse(&["lag", "--output", "yaml"]).is_err());
    }

    #[test]
    fn parses_offsets_reset_targets_and_selections() {
        let Command::Offsets { command: OffsetsCommand::Reset(args) } =
            parse(&["offsets", "reset", "--to-earliest"]).expect("parses").command
        else {
            panic!("offsets reset")
        };
        assert_eq!(args.to.target(), ResetTarget::Earliest);
        assert!(!args.execute && args.topics.is_empty() && args.group.is_none());

        let Command::Offsets { command: OffsetsCommand::Reset(args) } = parse(&[
            "offsets",
            "reset",
            "--shift-by",
            "-10",
            "--topic",
            "order.events:0,2",
            "--topic",
            "cart.events",
            "--group",
            "g",
            "--execute",
            "--yes",
        ])
        .expect("parses")
        .command
        else {
            panic!("offsets reset")
        };
        assert_eq!(args.to.target(), ResetTarget::ShiftBy(-10));
        assert_eq!(
            args.topics,
            vec![
                TopicSelection { topic: "order.events".into(), partitions: Some(vec![0, 2]) },
                TopicSelection { topic: "cart.events".into(), partitions: None },
            ]
        );
        assert!(args.execute && args.yes);
        assert_eq!(args.group.as_deref(), Some("g"));

        let Command::Offsets { command: OffsetsCommand::Reset(args) } =
            parse(&["offsets", "reset", "--to-datetime", "2026-11-23T08:00:00+01:00"])
                .expect("parses")
                .command
        else {
            panic!("offsets reset")
        };
        assert_eq!(args.to.target(), ResetTarget::Datetime(1_795_417_200_000));
        let Command::Offsets { command: OffsetsCommand::Reset(args) } =
            parse(&["offsets", "reset", "--to-offset", "42"]).expect("parses").command
        else {
            panic!("offsets reset")
        };
        assert_eq!(args.to.target(), ResetTarget::Offset(42));
    }

    #[test]
    fn rejects_bad_offsets_reset_arguments() {
        assert!(parse(&["offsets", "reset"]).is_err(), "a target is required");
        assert!(parse(&["offsets", "reset", "--to-earliest", "--to-latest"]).is_err(), "one target only");
        assert!(parse(&["offsets", "reset", "--to-datetime", "yesterday"]).is_err());
        assert!(parse(&["offsets", "reset", "--to-offset", "-1"]).is_err());
        assert!(parse(&["offsets", "reset", "--to-earliest", "--topic", "a:x"]).is_err());
        assert!(parse(&["offsets", "reset", "--to-earliest", "--topic", "bad topic"]).is_err());
        assert!(
            parse(&["offsets", "reset", "--to-earliest", "--execute", "--assume-group-empty"]).is_err(),
            "no way around the live-member check"
        );
        assert!(parse(&["offsets", "reset", "--to-earliest", "--yes"]).is_err(), "needs --execute");
    }

    #[test]
    fn parses_dlq_commands() {
        let Command::Dlq { command: DlqCommand::List(args) } = parse(&[
            "dlq",
            "list",
            "--projection",
            "order_summary",
            "--reason",
            "version_gap",
            "--output",
            "json",
        ])
        .expect("parses")
        .command
        else {
            panic!("dlq list")
        };
        assert_eq!(args.projection.as_deref(), Some("order_summary"));
        assert_eq!(args.reason.as_deref(), Some("version_gap"));
        assert_eq!((args.status, args.limit, args.output), (StatusFilter::Open, 100, OutputFormat::Json));
        assert!(matches!(
            parse(&["dlq", "show", "7"]).expect("parses").command,
            Command::Dlq { command: DlqCommand::Show { id: 7, .. } }
        ));
        let id = "7d7c2f0e-0000-4000-8000-000000000001";
        let Command::Dlq { command: DlqCommand::Redrive(args) } =
            parse(&["dlq", "redrive", "--aggregate", &format!("order:{id}")]).expect("parses").command
        else {
            panic!("dlq redrive")
        };
        assert_eq!(
            args.aggregate.map(|(t, id)| (t.as_str(), id)),
            Some(("order", id.parse().expect("uuid")))
        );
        let Command::Dlq { command: DlqCommand::Redrive(args) } =
            parse(&["dlq", "redrive", "--all", "--projection", "cart_view_g1"]).expect("parses").command
        else {
            panic!("dlq redrive")
        };
        assert!(args.all && args.id.is_none());
        let Command::Dlq { command: DlqCommand::Redrive(args) } =
            parse(&["dlq", "redrive", "12"]).expect("parses").command
        else {
            panic!("dlq redrive")
        };
        assert_eq!(args.id, Some(12));
        assert!(matches!(
            parse(&["dlq", "discard", "3", "--yes"]).expect("parses").command,
            Command::Dlq { command: DlqCommand::Discard { id: 3, yes: true } }
        ));
    }

    #[test]
    fn rejects_bad_dlq_arguments() {
        assert!(parse(&["dlq", "redrive"]).is_err(), "what to redrive is required");
        assert!(parse(&["dlq", "redrive", "3", "--all"]).is_err(), "one selection only");
        assert!(parse(&["dlq", "redrive", "--aggregate", "order"]).is_err());
        assert!(
            parse(&["dlq", "redrive", "--aggregate", "Invoice:7d7c2f0e-0000-4000-8000-000000000001"])
                .is_err(),
            "not an aggregate type name"
        );
        assert!(parse(&["dlq", "redrive", "--aggregate", "order:not-a-uuid"]).is_err());
        assert!(parse(&["dlq", "show", "x"]).is_err());
        assert!(parse(&["dlq", "list", "--status", "gone"]).is_err());
    }

    #[test]
    fn the_command_tree_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    /// The `--flags` a help text mentions.
    fn flags_mentioned(help: &str) -> std::collections::BTreeSet<String> {
        let mut found = std::collections::BTreeSet::new();
        let mut rest = help;
        while let Some(at) = rest.find("--") {
            let name: String = rest[at + 2..]
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-')
                .collect();
            if name.chars().next().is_some_and(|c| c.is_ascii_lowercase()) {
                found.insert(name.trim_end_matches('-').to_owned());
            }
            rest = &rest[at + 2..];
        }
        found
    }

    /// The long flags of `command` and of every command below it.
    fn own_flags(command: &clap::Command) -> std::collections::BTreeSet<String> {
        let mut flags: std::collections::BTreeSet<String> =
            command.get_arguments().filter_map(|a| a.get_long().map(str::to_owned)).collect();
        flags.extend(["help".to_owned(), "version".to_owned()]);
        for sub in command.get_subcommands() {
            flags.extend(own_flags(sub));
        }
        flags
    }

    /// Every command's `--help` mentions only flags that command (or one below it) has: a
    /// flag that belongs to another command (`--watch` is `lag`'s) sends a reader looking for
    /// an option that is not there.
    #[test]
    fn every_help_text_mentions_only_its_own_flags() {
        use clap::CommandFactory;
        fn check(command: &mut clap::Command, path: &str, checked: &mut usize) {
            let help = command.render_long_help().to_string();
            let own = own_flags(command);
            let foreign: Vec<String> =
                flags_mentioned(&help).into_iter().filter(|f| !own.contains(f)).collect();
            assert!(
                foreign.is_empty(),
                "`{path} --help` mentions {foreign:?}, which it does not have:\n{help}"
            );
            *checked += 1;
            // clap's generated `help` subcommands list their siblings: those are checked themselves.
            let names: Vec<String> =
                command.get_subcommands().map(|c| c.get_name().to_owned()).filter(|n| n != "help").collect();
            for name in names {
                let sub = command.find_subcommand_mut(&name).expect("subcommand");
                check(sub, &format!("{path} {name}"), checked);
            }
        }
        let mut cli = Cli::command();
        cli.build();
        let mut checked = 0;
        check(&mut cli, "prismctl", &mut checked);
        assert!(checked >= 12, "every command was looked at ({checked})");
        assert_eq!(
            flags_mentioned("use --watch, or --count 3 with --output=json; not -- or ---"),
            ["count", "output", "watch"].map(str::to_owned).into()
        );
    }

    /// Topic examples have this deployment's form, `<topics.prefix><aggregate type>.events`.
    #[test]
    fn offsets_reset_help_names_topics_of_the_deployments_form() {
        use clap::CommandFactory;
        let mut cli = Cli::command();
        cli.build();
        let reset = cli
            .find_subcommand_mut("offsets")
            .and_then(|o| o.find_subcommand_mut("reset"))
            .expect("offsets reset");
        let help = reset.render_long_help().to_string();
        assert!(help.contains("<topics.prefix><aggregate type>.events"), "{help}");
        assert!(help.contains("prism.order.events:0,2"), "{help}");
        assert!(!help.contains("orders.events"), "no topic of another form: {help}");
    }

    #[test]
    fn destructive_commands_take_yes() {
        let Command::Dlq { command: DlqCommand::Redrive(args) } =
            parse(&["dlq", "redrive", "--all", "--yes"]).expect("parses").command
        else {
            panic!("dlq redrive")
        };
        assert!(args.yes);
        let Command::Dlq { command: DlqCommand::Redrive(args) } =
            parse(&["dlq", "redrive", "3"]).expect("parses").command
        else {
            panic!("dlq redrive")
        };
        assert!(!args.yes, "asking is the default");
    }
}
