"""The network as a picture that scales with the page: the stem, one box per block, an exit head under each exit
block with its cost. "How MET works" draws the loaded model; the journey page colours how far an image got."""

from __future__ import annotations

from collections.abc import Sequence

import plotly.graph_objects as go

# fills with dark text on them (contrast above 7:1); skipped blocks also get a dashed border, not only a lighter fill
RUN, SKIPPED, AHEAD, FROZEN = "#56B4E9", "#d9d9d9", "#ffffff", "#dbe9f6"


def network_figure(
    exits: Sequence[int],
    gmacs: Sequence[float],
    adapters: bool,
    font: int = 18,
    run_upto: int | None = None,
    leaves_after: int | None = None,
    height: int = 300,
) -> go.Figure:
    """Blocks 1..depth with the exit heads below; with `run_upto`, blocks up to it are drawn as run, blocks after
    `leaves_after` (where the image left) as skipped, and the rest as still ahead."""
    depth = exits[-1]
    fig = go.Figure()

    def box(x0: float, x1: float, y0: float, y1: float, fill: str, text: str, size: int = font) -> None:
        fig.add_shape(
            type="rect",
            x0=x0,
            x1=x1,
            y0=y0,
            y1=y1,
            fillcolor=fill,
            line=dict(color="#555", width=1, dash="dash" if fill == SKIPPED else "solid"),
        )
        fig.add_annotation(
            x=(x0 + x1) / 2, y=(y0 + y1) / 2, text=text, showarrow=False, font=dict(size=size, color="#111")
        )

    box(-1.4, -0.15, 1.2, 2.6, "#fff3d6", "image<br>patches +<br>position", font - 2)
    fig.add_annotation(
        x=depth / 2,
        y=2.75,
        showarrow=False,
        font=dict(size=font - 2),  # the theme's text colour
        text="blocks (frozen" + (", each with its E-adapters)" if adapters else ")"),
    )
    for b in range(1, depth + 1):
        fill = FROZEN
        if run_upto is not None:
            fill = RUN if b <= run_upto else (SKIPPED if leaves_after is not None and b > leaves_after else AHEAD)
        box(b - 0.95, b - 0.05, 1.2, 2.6, fill, f"<b>{b}</b>", font - 2)
    for k, b in enumerate(exits):
        left = leaves_after is not None and b == leaves_after
        fig.add_annotation(
            x=b - 0.5,
            y=0.95,
            ax=b - 0.5,
            ay=1.2,
            xref="x",
            yref="y",
            axref="x",
            ayref="y",
            showarrow=True,
            arrowhead=2,
            arrowwidth=2,
            arrowcolor="crimson" if left else "#777",
        )
        cost = f"<br>{gmacs[k]:.3f}<br>GMACs" if k < len(gmacs) else ""
        box(b - 0.98, b - 0.02, 0.0, 0.9, "#fde0dd" if left else "white", f"<b>exit {k + 1}</b>" + cost, font - 3)
    fig.update_layout(
        height=height,
        margin=dict(l=5, r=5, t=5, b=5),
        plot_bgcolor="rgba(0,0,0,0)",
        paper_bgcolor="rgba(0,0,0,0)",
        showlegend=False,
        xaxis=dict(visible=False, range=[-1.5, depth + 0.1], fixedrange=True),
        yaxis=dict(visible=False, range=[-0.1, 2.9], fixedrange=True),
    )
    return fig
