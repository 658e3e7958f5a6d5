# Sourced by scripts/sanitize.sh and scripts/valgrind.sh: copies this tree
# (tracked and untracked files, not ignored ones) to $work/src and makes a
# virtual environment in $work/venv, so a special build of the compiled core
# never touches this checkout's build/ or in-place extension.
# Expects $work (an empty directory) and the working directory at the top.
mkdir "$work/src"
git ls-files -z --cached --others --exclude-standard \
    | tar --null --files-from=- --ignore-failed-read -cf - \
    | tar -xf - -C "$work/src"
python3 -m venv "$work/venv"
"$work/venv/bin/python" -m pip install --quiet --upgrade pip
