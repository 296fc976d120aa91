//! Keys to actions: a pure function of the input mode and the key, so it is
//! tested on its own and the app never looks at raw key codes.

use crossterm::event::{KeyCode, KeyEvent, KeyEventKind, KeyModifiers};

/// What the keyboard is doing: moving around, typing into a prompt, or
/// reading the help.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Normal,
    Prompt,
    Help,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Quit,
    Help,
    Up,
    Down,
    Left,
    Right,
    PageUp,
    PageDown,
    Home,
    End,
    ZoomIn,
    ZoomOut,
    /// Map → tree → (files read) → map.
    NextPane,
    Select,
    Back,
    Search,
    Goto,
    Type(char),
    Erase,
    Submit,
    Cancel,
    PlayPause,
    StepForward,
    StepBack,
    Slower,
    Faster,
    JumpBack,
    JumpForward,
}

pub fn action(mode: Mode, key: KeyEvent) -> Option<Action> {
    if key.kind == KeyEventKind::Release {
        return None;
    }
    let ctrl = key.modifiers.contains(KeyModifiers::CONTROL);
    if ctrl && matches!(key.code, KeyCode::Char('c') | KeyCode::Char('q')) {
        return Some(Action::Quit);
    }
    match mode {
        Mode::Help => match key.code {
            KeyCode::Char('q') => Some(Action::Quit),
            _ => Some(Action::Cancel),
        },
        Mode::Prompt => match key.code {
            KeyCode::Enter => Some(Action::Submit),
            KeyCode::Esc => Some(Action::Cancel),
            KeyCode::Backspace => Some(Action::Erase),
            KeyCode::Char(c) if !ctrl => Some(Action::Type(c)),
            _ => None,
        },
        Mode::Normal => normal(key.code, ctrl),
    }
}

fn normal(code: KeyCode, ctrl: bool) -> Option<Action> {
    use Action::*;
    Some(match code {
        KeyCode::Char('q') => Quit,
        KeyCode::Char('?') | KeyCode::F(1) => Help,
        KeyCode::Up | KeyCode::Char('k') => Up,
        KeyCode::Down | KeyCode::Char('j') => Down,
        KeyCode::Left | KeyCode::Char('h') => Left,
        KeyCode::Right | KeyCode::Char('l') => Right,
        KeyCode::PageUp => PageUp,
        KeyCode::PageDown => PageDown,
        KeyCode::Char('b') if ctrl => PageUp,
        KeyCode::Char('f') if ctrl => PageDown,
        KeyCode::Home => Home,
        KeyCode::End => End,
        KeyCode::Char('+') | KeyCode::Char('=') => ZoomIn,
        KeyCode::Char('-') | KeyCode::Char('_') => ZoomOut,
        KeyCode::Tab => NextPane,
        KeyCode::Enter => Select,
        KeyCode::Esc | KeyCode::Backspace => Back,
        KeyCode::Char('/') => Search,
        KeyCode::Char('g') => Goto,
        KeyCode::Char(' ') => PlayPause,
        KeyCode::Char('.') => StepForward,
        KeyCode::Char(',') => StepBack,
        KeyCode::Char('[') => Slower,
        KeyCode::Char(']') => Faster,
        KeyCode::Char('<') => JumpBack,
        KeyCode::Char('>') => JumpForward,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(code: KeyCode) -> KeyEvent {
        KeyEvent::new(code, KeyModifiers::NONE)
    }

    fn ctrl(c: char) -> KeyEvent {
        KeyEvent::new(KeyCode::Char(c), KeyModifiers::CONTROL)
    }

    #[test]
    fn vi_keys_and_arrows_move_alike() {
        for (a, b) in [
            (KeyCode::Up, KeyCode::Char('k')),
            (KeyCode::Down, KeyCode::Char('j')),
            (KeyCode::Left, KeyCode::Char('h')),
            (KeyCode::Right, KeyCode::Char('l')),
        ] {
            assert_eq!(action(Mode::Normal, key(a)), action(Mode::Normal, key(b)));
            assert!(action(Mode::Normal, key(a)).is_some());
        }
    }

    #[test]
    fn the_issue_s_keys() {
        let n = |c| action(Mode::Normal, key(KeyCode::Char(c)));
        assert_eq!(n('+'), Some(Action::ZoomIn));
        assert_eq!(n('-'), Some(Action::ZoomOut));
        assert_eq!(n('/'), Some(Action::Search));
        assert_eq!(n('g'), Some(Action::Goto));
        assert_eq!(n(' '), Some(Action::PlayPause));
        assert_eq!(n('.'), Some(Action::StepForward));
        assert_eq!(n(','), Some(Action::StepBack));
        assert_eq!(n('?'), Some(Action::Help));
        assert_eq!(n('q'), Some(Action::Quit));
        assert_eq!(
            action(Mode::Normal, key(KeyCode::PageDown)),
            Some(Action::PageDown)
        );
        assert_eq!(
            action(Mode::Normal, key(KeyCode::PageUp)),
            Some(Action::PageUp)
        );
    }

    #[test]
    fn a_prompt_takes_letters_as_text() {
        // 'q' and 'g' are commands on the map but letters of a path.
        for c in ['q', 'g', 'j', '/', ' '] {
            assert_eq!(
                action(Mode::Prompt, key(KeyCode::Char(c))),
                Some(Action::Type(c))
            );
        }
        assert_eq!(
            action(Mode::Prompt, key(KeyCode::Enter)),
            Some(Action::Submit)
        );
        assert_eq!(
            action(Mode::Prompt, key(KeyCode::Esc)),
            Some(Action::Cancel)
        );
        assert_eq!(
            action(Mode::Prompt, key(KeyCode::Backspace)),
            Some(Action::Erase)
        );
    }

    #[test]
    fn ctrl_c_quits_from_anywhere() {
        for mode in [Mode::Normal, Mode::Prompt, Mode::Help] {
            assert_eq!(action(mode, ctrl('c')), Some(Action::Quit));
        }
    }

    #[test]
    fn any_key_closes_the_help() {
        assert_eq!(
            action(Mode::Help, key(KeyCode::Char('x'))),
            Some(Action::Cancel)
        );
        assert_eq!(
            action(Mode::Help, key(KeyCode::Char('q'))),
            Some(Action::Quit)
        );
    }

    #[test]
    fn key_releases_are_ignored() {
        let mut k = key(KeyCode::Char('q'));
        k.kind = KeyEventKind::Release;
        assert_eq!(action(Mode::Normal, k), None);
    }

    #[test]
    fn unbound_keys_do_nothing() {
        assert_eq!(action(Mode::Normal, key(KeyCode::Char('Z'))), None);
        assert_eq!(action(Mode::Normal, key(KeyCode::Insert)), None);
    }
}
