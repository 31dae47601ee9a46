"""`ospo inspect`: a Textual browser of a run's completions and where their credit went.

Left: steps -> prompts (groups). Right: the group's G completions, then tabs with the
selected completion coloured by token advantage (OSPO beside GRPO's flat advantage), its
segment table (Owen values, sortable) and its coalition table (v(S)). The app polls the run
directory and appends the steps a still-training run writes.
"""

from __future__ import annotations

from typing import ClassVar

from rich.console import Group
from rich.text import Text
from textual import on
from textual.app import App, ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.widgets import DataTable, Footer, Input, Static, TabbedContent, TabPane, Tree
from textual.widgets.tree import TreeNode

from ospo_mlx.ui import palette, renderables
from ospo_mlx.ui.runreader import RolloutRecord, RunReader

Key = tuple[int, int, int]


class InspectorApp(App[None]):
    """Browse a run directory's rollouts and their OSPO attributions."""

    TITLE = "ospo inspect"
    CSS = """
    #header { height: auto; max-height: 2; padding: 0 1; background: $panel; }
    #steps { width: 26; border-right: solid $primary-background; }
    #main { width: 1fr; }
    #members { height: auto; max-height: 9; overflow-x: hidden; }
    #views { height: 1fr; }
    TabPane { padding: 0; }
    #credit-scroll { height: 1fr; }
    #credit { padding: 0 1; }
    #search { dock: bottom; display: none; }
    #search.visible { display: block; }
    Screen.-narrow #steps { width: 20; }
    """
    HORIZONTAL_BREAKPOINTS: ClassVar[list[tuple[int, str]]] = [(0, "-narrow"), (100, "-wide")]
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("q", "quit", "quit"),
        Binding("slash", "search", "search"),
        Binding("n", "next_match", "next match", show=False),
        Binding("s", "sort", "sort segments"),
        Binding("j", "down", "down", show=False),
        Binding("k", "up", "up", show=False),
        Binding("1", "tab('credit')", "credit", show=False),
        Binding("2", "tab('segments')", "segments", show=False),
        Binding("3", "tab('coalitions')", "coalitions", show=False),
        Binding("escape", "close_search", "close search", show=False),
    ]

    def __init__(
        self,
        reader: RunReader,
        *,
        follow: bool = True,
        poll_interval: float = 1.0,
        start: tuple[int, int, int | None] | None = None,
    ):
        super().__init__()
        self.start = start
        self.reader = reader
        self.follow = follow
        self.poll_interval = poll_interval
        self.current: Key | None = None
        self.sort_by = "owen"
        self.query_text = ""
        self._group_nodes: dict[tuple[int, int], TreeNode] = {}
        self._step_nodes: dict[int, TreeNode] = {}
        self._members_of: tuple[int, int] | None = None

    # -- layout ----------------------------------------------------------------------------
    def compose(self) -> ComposeResult:
        yield Static(id="header")
        with Horizontal():
            tree: Tree[tuple[int, int] | int] = Tree("steps", id="steps")
            tree.show_root = False
            yield tree
            with Vertical(id="main"):
                yield DataTable(id="members", cursor_type="row", zebra_stripes=True)
                with TabbedContent(id="views", initial="credit"):
                    with TabPane("credit", id="credit"), VerticalScroll(id="credit-scroll"):
                        yield Static(id="credit-body")
                    with TabPane("segments", id="segments"):
                        yield DataTable(id="segment-table", cursor_type="row")
                    with TabPane("coalitions", id="coalitions"):
                        yield DataTable(id="coalition-table", cursor_type="row")
        yield Input(
            placeholder="search completions and prompts (enter: go, esc: close)", id="search"
        )
        yield Footer()

    def on_mount(self) -> None:
        members = self.query_one("#members", DataTable)
        for name, width in (("m", 2), ("reward", 7), ("adv", 7), ("len", 4), ("completion", None)):
            members.add_column(name, key=name, width=width)
        coal = self.query_one("#coalition-table", DataTable)
        for name in ("#", "members", "v(S)", "coalition text"):
            coal.add_column(name, key=name)
        self._add_tree_nodes(self.reader.all_records())
        self._refresh_header()
        for warning in self.reader.warnings:
            self.notify(warning, severity="warning", timeout=8)
        steps = self.reader.step_ids()
        if self.start is not None and self.start[:2] in self._group_nodes:
            self._select_group(*self.start)
        elif steps:  # open on the newest step's first prompt
            self._select_group(steps[-1], self.reader.group_ids(steps[-1])[0])
        else:
            self._show_record(None)
        self.query_one("#steps", Tree).focus()
        if self.follow:
            self.set_interval(self.poll_interval, self.poll_run)

    # -- data -> widgets -------------------------------------------------------------------
    def _add_tree_nodes(self, records: list[RolloutRecord]) -> None:
        tree = self.query_one("#steps", Tree)
        for step, group in sorted({(r.step, r.group) for r in records}):
            if (step, group) in self._group_nodes:
                continue
            if step not in self._step_nodes:
                later = [s for s in self._step_nodes if s > step]
                before = self._step_nodes[min(later)] if later else None
                self._step_nodes[step] = tree.root.add(
                    f"step {step}", data=step, expand=True, before=before
                )
            prompt = self.reader.members(step, group)[0].prompt or f"group {group}"
            node = self._step_nodes[step]
            siblings = sorted([g for s, g in self._group_nodes if s == step and g > group])
            before = self._group_nodes[(step, siblings[0])] if siblings else None
            self._group_nodes[(step, group)] = node.add_leaf(
                f"{group}: {prompt}", data=(step, group), before=before
            )

    def _refresh_header(self) -> None:
        header = renderables.run_header(self.reader, width=12)
        if self.follow:
            header.append("  ● following", style="green")
        self.query_one("#header", Static).update(header)

    def _select_group(self, step: int, group: int, member: int | None = None) -> None:
        node = self._group_nodes.get((step, group))
        if node is not None:
            tree = self.query_one("#steps", Tree)
            if node.parent is not None:
                node.parent.expand()
            # tree lines are laid out on the next refresh; moving earlier is lost
            self.call_after_refresh(tree.move_cursor, node)
        self._fill_members(step, group, member)

    def _fill_members(self, step: int, group: int, member: int | None = None) -> None:
        table = self.query_one("#members", DataTable)
        records = self.reader.members(step, group)
        keep = member if member is not None else (self.current[2] if self.current else None)
        same_group = self._members_of == (step, group)
        table.clear()
        # the preview gets what the numeric columns leave, so the table never scrolls sideways
        preview = max(10, (table.size.width or self.size.width - 26) - 32)
        for rec in records:
            adv_style = "green" if rec.advantage >= 0 else "red"
            table.add_row(
                str(rec.member),
                f"{rec.reward:.4f}",
                Text(f"{rec.advantage:+.3f}", style=adv_style),
                str(rec.length),
                _clip(" ".join(rec.completion.split()), preview),
                key=str(rec.member),
            )
        self._members_of = (step, group)
        if not records:
            return
        members = [r.member for r in records]
        target = keep if (keep in members and (same_group or member is not None)) else members[0]
        table.move_cursor(row=members.index(target))
        self._show_record(self.reader.record(step, group, target))

    def _show_record(self, rec: RolloutRecord | None) -> None:
        body = self.query_one("#credit-body", Static)
        if rec is None:
            self.current = None
            body.update(
                Text(
                    "waiting for rollouts… (rollouts.jsonl has no complete line yet)",
                    style="yellow",
                )
            )
            return
        self.current = rec.key
        views = [
            Text.assemble(("prompt ", "dim"), rec.prompt or "(not logged)"),
            Text.assemble(
                (renderables.record_title(rec) + "  ", "bold"), renderables.record_stats(rec)
            ),
            Text(),
            renderables.comparison(
                rec, highlight=self.query_text or None, stacked=self.size.width < 100
            ),
        ]
        if rec.coalitions:  # is the credit believable? baseline, efficiency, warnings
            views += [Text(), renderables.credit_check(rec.owen, rec.coalitions, rec.coalition_values)]
        body.update(Group(*views))
        self._fill_segments(rec)
        self._fill_coalitions(rec)

    def _fill_segments(self, rec: RolloutRecord) -> None:
        table = self.query_one("#segment-table", DataTable)
        # the sorted column's header carries an arrow (numbers sort descending, text A-Z)
        sorted_column = {
            "position": "#",
            "text": "segment",
            "owen": "Owen φ",
            "share": "Owen φ",
            "tokens": "tok",
        }
        arrow = " ▲" if self.sort_by in ("position", "text") else " ▼"
        table.clear(columns=True)
        for name in ("#", "segment", "Owen φ", "share", "tok"):
            table.add_column(
                name + (arrow if sorted_column[self.sort_by] == name else ""), key=name
            )
        owen = rec.owen or [0.0] * len(rec.segments)
        texts, counts = rec.segment_texts, rec.segment_token_counts()
        shares = renderables.credit_shares(owen)
        scale = palette.symmetric_scale(owen)
        for j in renderables.sort_segments(texts, owen, counts, self.sort_by):
            table.add_row(
                str(j),
                texts[j].strip(),
                Text(f"{owen[j]:+.4f}", style=palette.advantage_style(owen[j], scale)),
                f"{shares[j]:+.1%}",
                str(counts[j]),
                key=str(j),
            )

    def _fill_coalitions(self, rec: RolloutRecord) -> None:
        table = self.query_one("#coalition-table", DataTable)
        table.clear()
        for i, (members, text, value) in enumerate(
            zip(rec.coalitions, rec.coalition_texts(), rec.coalition_values, strict=True)
        ):
            table.add_row(str(i), renderables.format_members(members), f"{value:.4f}", text)

    # -- events ----------------------------------------------------------------------------
    def on_resize(self) -> None:
        if self.current is not None:  # side by side vs stacked depends on the width
            self._show_record(self.reader.record(*self.current))

    @on(Tree.NodeHighlighted, "#steps")
    def _on_node(self, event: Tree.NodeHighlighted) -> None:
        data = event.node.data
        if isinstance(data, tuple) and self._members_of != data:
            self._fill_members(*data)

    @on(Tree.NodeSelected, "#steps")
    def _on_node_selected(self, event: Tree.NodeSelected) -> None:
        if isinstance(event.node.data, tuple):  # enter on a prompt: go to its completions
            self.query_one("#members", DataTable).focus()

    @on(DataTable.RowHighlighted, "#members")
    def _on_member(self, event: DataTable.RowHighlighted) -> None:
        if self._members_of is None or event.row_key.value is None:
            return
        key = (*self._members_of, int(event.row_key.value))
        if key != self.current:
            self._show_record(self.reader.record(*key))

    @on(DataTable.RowSelected, "#members")
    def _on_member_selected(self) -> None:
        self.query_one("#credit-scroll").focus()

    @on(DataTable.HeaderSelected, "#segment-table")
    def _on_segment_header(self, event: DataTable.HeaderSelected) -> None:
        by_column = {
            "#": "position",
            "segment": "text",
            "Owen φ": "owen",
            "share": "share",
            "tok": "tokens",
        }
        self._set_sort(by_column.get(str(event.column_key.value), "position"))

    @on(Input.Submitted, "#search")
    def _on_search(self, event: Input.Submitted) -> None:
        self.query_text = event.value.strip()
        self.action_close_search()
        if self.query_text:
            self.action_next_match()
        elif self.current:
            self._show_record(self.reader.record(*self.current))

    # -- actions ---------------------------------------------------------------------------
    def action_down(self) -> None:
        self._move(+1)

    def action_up(self) -> None:
        self._move(-1)

    def _move(self, delta: int) -> None:
        widget = self.focused
        name = "cursor_down" if delta > 0 else "cursor_up"
        if widget is not None and hasattr(widget, f"action_{name}"):
            getattr(widget, f"action_{name}")()
        elif widget is not None and hasattr(widget, "scroll_down"):
            (widget.scroll_down if delta > 0 else widget.scroll_up)()

    def action_tab(self, tab: str) -> None:
        self.query_one("#views", TabbedContent).active = tab

    def action_sort(self) -> None:
        order = ("owen", "tokens", "text", "position")
        self._set_sort(
            order[(order.index(self.sort_by) + 1) % len(order)] if self.sort_by in order else "owen"
        )
        self.action_tab("segments")

    def _set_sort(self, sort_by: str) -> None:
        self.sort_by = sort_by
        if self.current is not None:
            self._fill_segments(self.reader.record(*self.current))

    def action_search(self) -> None:
        box = self.query_one("#search", Input)
        box.add_class("visible")
        box.value = self.query_text
        box.focus()

    def action_close_search(self) -> None:
        box = self.query_one("#search", Input)
        if box.has_class("visible"):
            box.remove_class("visible")
            self.query_one("#steps", Tree).focus()

    def action_next_match(self) -> None:
        """Jump to the next completion (after the current one, wrapping) containing the query."""
        if not self.query_text:
            self.notify("press / to search first", timeout=3)
            return
        needle = self.query_text.lower()
        hits = [
            r.key
            for r in self.reader.all_records()
            if needle in r.completion.lower() or needle in r.prompt.lower()
        ]
        if not hits:
            self.notify(f"no completion or prompt contains {self.query_text!r}", severity="warning")
            if self.current:
                self._show_record(self.reader.record(*self.current))
            return
        after = [k for k in hits if self.current is None or k > self.current]
        step, group, member = (after or hits)[0]
        self._select_group(step, group, member)
        self._show_record(self.reader.record(step, group, member))
        self.notify(
            f"match {hits.index((step, group, member)) + 1}/{len(hits)} (n: next)", timeout=3
        )

    def poll_run(self) -> None:
        """Read what the trainer appended; add new steps/prompts; warn about corrupt lines."""
        result = self.reader.poll()
        if not result.changed:
            return
        self._add_tree_nodes(result.new_records)
        if self._members_of is None and self.reader.step_ids():
            first = self.reader.step_ids()[0]
            self._select_group(first, self.reader.group_ids(first)[0])
        elif self._members_of in {(r.step, r.group) for r in result.new_records}:
            self._fill_members(*self._members_of)
        for warning in result.new_warnings:
            self.notify(warning, severity="warning", timeout=8)
        self._refresh_header()


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def run_inspector(
    reader: RunReader,
    *,
    follow: bool = True,
    poll_interval: float = 1.0,
    start: tuple[int, int, int | None] | None = None,
) -> None:
    """Run the interactive inspector until the user quits; `start` = (step, group, member or None)."""
    InspectorApp(reader, follow=follow, poll_interval=poll_interval, start=start).run()
