"""Files written all or nothing, also when several threads of one process write the same target."""

import threading

from contourqa.qa_models.atomic import write_text_atomically


def test_threads_writing_one_target_at_once_never_share_a_temporary_file(tmp_path):
    """Two schedulers' job threads in one process both write the reports' index: with a temporary name
    per process only, one renamed the other's file away and failed."""
    target, errors = tmp_path / "index.html", []

    def write(text: str) -> None:
        try:
            for _ in range(200):
                write_text_atomically(target, text)
        except OSError as error:
            errors.append(error)

    threads = [threading.Thread(target=write, args=(str(n) * 50_000,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert target.read_text() in {str(n) * 50_000 for n in range(4)}  # whole, never a mix
    assert [p.name for p in tmp_path.iterdir()] == ["index.html"]  # no temporary left behind
