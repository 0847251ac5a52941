"""nbgrader's exchange on a shared machine, with submissions only the instructors can read.

nbgrader 0.9's default submit copies a student's folder into `<exchange>/<course>/inbound/<student>+
<assignment>+<timestamp>+<random>/` readable by every user: the inbound folder cannot be listed, so
only the random name hides a submission (and its `submission_secret.txt`, from which the name of the
student's feedback page is computed). `PrivateSubmit` (deploy/nbgrader_config.py) keeps it from
other students. The inbound folder is set-group-ID and belongs to the instructor's primary group
(nbgrader makes it so when the instructor releases), so everything created inside it belongs to that
group: the submission needs no "other" bits. Two details make that hold: the copy creates folders
with mkdir (shutil.copytree's copystat would clear the folder's set-group-ID bit, which a student
outside the group cannot set again, and the files nbgrader writes afterwards would take the
student's group), and the modes are narrowed only when the group is not one of the student's own.
"""

from __future__ import annotations

import os
import shutil
import stat

from nbgrader.exchange.default.submit import ExchangeSubmit
from nbgrader.utils import ignore_patterns


class PrivateSubmit(ExchangeSubmit):
    def _private(self) -> bool:
        """The inbound folder hands its own group to what is created in it, and that group is not ours."""
        inbound = os.stat(self.inbound_path)
        return bool(inbound.st_mode & stat.S_ISGID) and inbound.st_gid not in {os.getgid(), *os.getgroups()}

    def do_copy(self, src, dest, log=None):
        if os.path.dirname(os.path.abspath(dest)) != os.path.abspath(self.inbound_path) or not self._private():
            return super().do_copy(src, dest, log)
        if self.get_size(src) > 1000 * self.coursedir.max_dir_size:
            raise RuntimeError(f"Directory size is too big: more than {1000 * self.coursedir.max_dir_size} bytes")
        ignore = ignore_patterns(exclude=self.coursedir.ignore, include=self.coursedir.include,
                                 max_file_size=self.coursedir.max_file_size, log=self.log)
        for folder, dirs, files in os.walk(src):
            skipped = ignore(folder, dirs + files)
            dirs[:] = [d for d in dirs if d not in skipped]
            target = os.path.normpath(os.path.join(dest, os.path.relpath(folder, src)))
            os.makedirs(target, exist_ok=True)  # inherits the inbound folder's group and set-group-ID bit
            for name in files:
                if name not in skipped:
                    shutil.copyfile(os.path.join(folder, name), os.path.join(target, name))

    def copy_files(self) -> None:
        super().copy_files()  # the copy above, then timestamp.txt, submission_secret.txt and nbgrader's modes
        if not self._private():
            self.log.warning("inbound folder %s is not set-group-ID to a group of the instructors alone: the "
                             "submission stays readable by every user who learns its name", self.inbound_path)
            return
        submission = os.path.join(self.inbound_path, self.assignment_filename)
        for folder, _dirs, files in os.walk(submission):
            os.chmod(folder, 0o770)  # the instructors may read it, and delete it after collecting
            for name in files:
                os.chmod(os.path.join(folder, name), 0o640)
