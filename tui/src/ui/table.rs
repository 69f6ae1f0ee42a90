//! A table that fits its columns to the width and builds only the rows on screen.
//!
//! Columns carry a priority: on a narrow terminal the least important ones are left out rather
//! than every column being squeezed. Rows are produced by a closure for the visible window only,
//! so a list of 100,000 requests costs as much to draw as one of 20.

use crate::app::ListState;
use crate::ui::theme;
use ratatui::buffer::Buffer;
use ratatui::layout::{Constraint, Rect};
use ratatui::text::Line;
use ratatui::widgets::{Block, Cell, Paragraph, Row, StatefulWidget, Table, TableState, Widget};

/// One column: its header, the width it needs, and how much it matters (0 = always shown).
#[derive(Debug, Clone, Copy)]
pub struct Col {
    pub title: &'static str,
    pub width: u16,
    pub prio: u8,
    /// Takes the width left over (after every kept column has its own).
    pub fill: bool,
}

impl Col {
    pub const fn new(title: &'static str, width: u16, prio: u8) -> Self {
        Col {
            title,
            width,
            prio,
            fill: false,
        }
    }

    pub const fn fill(title: &'static str, width: u16, prio: u8) -> Self {
        Col {
            title,
            width,
            prio,
            fill: true,
        }
    }
}

/// Indices of the columns that fit in `avail` cells, most important first, in display order.
pub fn fit(cols: &[Col], avail: u16) -> Vec<usize> {
    let mut order: Vec<usize> = (0..cols.len()).collect();
    order.sort_by_key(|&i| (cols[i].prio, i));
    let mut used = 0u16;
    let mut kept = Vec::new();
    for i in order {
        let need = cols[i].width + u16::from(!kept.is_empty());
        if used + need <= avail {
            used += need;
            kept.push(i);
        }
    }
    kept.sort_unstable();
    kept
}

/// Draws `len` rows in `block`, asking `row(i)` for the cells of visible row `i` (one per column
/// in `cols`). `list` holds the selection; `None` draws no selection. `empty` is shown when
/// there are no rows.
#[allow(clippy::too_many_arguments)]
pub fn render<'a>(
    area: Rect,
    buf: &mut Buffer,
    block: Block<'a>,
    cols: &[Col],
    len: usize,
    list: Option<&ListState>,
    empty: &'a str,
    mut row: impl FnMut(usize) -> Vec<Cell<'a>>,
) {
    let inner = block.inner(area);
    block.render(area, buf);
    if inner.height == 0 || inner.width == 0 {
        return;
    }
    let kept = fit(cols, inner.width);
    let height = inner.height.saturating_sub(1) as usize;
    let offset = match list {
        Some(l) => l.scroll(len, height),
        None => 0,
    };
    let end = len.min(offset + height);
    let rows: Vec<Row<'a>> = (offset..end)
        .map(|i| {
            let mut cells: Vec<Option<Cell<'a>>> = row(i).into_iter().map(Some).collect();
            Row::new(
                kept.iter()
                    .map(|&k| cells.get_mut(k).and_then(Option::take).unwrap_or_default()),
            )
        })
        .collect();
    let widths = kept.iter().map(|&k| {
        if cols[k].fill {
            Constraint::Fill(cols[k].width)
        } else {
            Constraint::Length(cols[k].width)
        }
    });
    let header = Row::new(kept.iter().map(|&k| Cell::from(cols[k].title))).style(theme::HEADER);
    let table = Table::new(rows, widths)
        .header(header)
        .row_highlight_style(theme::SELECTED);
    let mut state = TableState::default();
    if let Some(l) = list
        && len > 0
    {
        state.select(Some(l.selected.min(len - 1) - offset));
    }
    StatefulWidget::render(table, inner, buf, &mut state);
    if len == 0 && inner.height > 1 {
        let r = Rect {
            y: inner.y + 1,
            height: 1,
            ..inner
        };
        Paragraph::new(Line::styled(empty, theme::DIM)).render(r, buf);
    }
}

/// A right-aligned cell, for numbers.
pub fn num<'a>(s: impl Into<String>) -> Cell<'a> {
    Cell::from(Line::from(s.into()).right_aligned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn least_important_columns_go_first() {
        let cols = [
            Col::new("A", 10, 0),
            Col::new("B", 10, 2),
            Col::new("C", 10, 1),
        ];
        assert_eq!(fit(&cols, 32), vec![0, 1, 2]);
        assert_eq!(fit(&cols, 31), vec![0, 2]);
        assert_eq!(fit(&cols, 10), vec![0]);
        assert_eq!(fit(&cols, 5), Vec::<usize>::new());
    }
}
